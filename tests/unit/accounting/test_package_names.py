"""No submodule of dpgov.accounting shadows a name the package exports: importing
``dpgov.accounting.<name>`` sets the package attribute ``<name>`` to the module, so a module
named like an exported function (it happened: ``group``) breaks every caller of the function
once anything imports the module."""

from __future__ import annotations

import importlib
import pkgutil
import types

import dpgov.accounting as accounting


def test_exported_names_stay_what_they_are_after_every_submodule_is_imported() -> None:
    for info in pkgutil.iter_modules(accounting.__path__):
        importlib.import_module(f"dpgov.accounting.{info.name}")
    shadowed = [
        n for n in accounting.__all__ if isinstance(getattr(accounting, n), types.ModuleType)
    ]
    assert shadowed == []
    modules = {info.name for info in pkgutil.iter_modules(accounting.__path__)}
    assert not modules & set(accounting.__all__)
