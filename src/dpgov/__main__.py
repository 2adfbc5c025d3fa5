from dpgov.cli import run

run()
