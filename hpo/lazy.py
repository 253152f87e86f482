"""Module-level imports that load on first use.

TensorFlow takes seconds to import, matplotlib, Optuna, pandas and scikit-learn a large part of
one; ``hpo --help`` and a one-line error must not wait for them. Importing them inside functions
would hide the dependency graph, so a module names what it needs at the top instead::

    if TYPE_CHECKING:
        import optuna
    else:
        optuna = lazy_import("optuna")

and the real import happens on the first attribute access. Type checkers see the plain import.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_import"]


class _LazyModule(types.ModuleType):
    def __init__(self, name: str, before: Callable[[], None] | None) -> None:
        super().__init__(name)
        self._hpo_before = before
        self._hpo_module: types.ModuleType | None = None

    def _hpo_load(self) -> types.ModuleType:
        if self._hpo_module is None:
            if self._hpo_before is not None:
                self._hpo_before()
            self._hpo_module = importlib.import_module(self.__name__)
        return self._hpo_module

    def __getattr__(self, item: str) -> Any:
        # Every lookup goes to the real module, so what it (or a test) rebinds later shows.
        return getattr(self._hpo_load(), item)


def lazy_import(name: str, *, before: Callable[[], None] | None = None) -> Any:
    """A stand-in for module ``name`` that imports it on first attribute access.

    ``before`` runs just before the real import (TensorFlow reads its logging settings from the
    environment at import time).
    """
    return _LazyModule(name, before)
