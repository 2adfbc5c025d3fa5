from dpgov.cli import main

main()
