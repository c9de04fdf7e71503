"""Optional dependencies (gymnasium, matplotlib, h5py, minari): imported only when a feature
needs them, with an error that says which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ReplayStoreError


class MissingDependencyError(ReplayStoreError, ImportError):
    """A feature needs a package that is not installed; the message names the pip extra."""


def require(module: str, extra: str, purpose: str, *, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError`.

    Parameters
    ----------
    module
        The module to import (``"matplotlib"``).
    extra
        The replaystore extra that installs it (``"plot"``), or ``""`` when there is none.
    purpose
        What needs it, for the message (``"inspect --plot"``).
    package
        The name on PyPI, when it differs from the module's.

    Examples
    --------
    >>> require("json", "", "tests").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but broken: show the real error
        hint = (f"pip install 'replaystore[{extra}]'" if extra
                else f"pip install {package or module}")
        raise MissingDependencyError(f"{purpose} needs {package or module}, which is not "
                                     f"installed: {hint}") from None
