"""A user's own code named in a config or a policy card as ``"module:function"``.

Setters, robust rules, callback factories, networks, learner losses and strategies are all found
the same way: the module is looked up in the folder the config names first (beside the config
file, once ``load_config`` has anchored it), then the working directory, then the usual ``sys.path``.

A device runs code a server names (the experiment's network or learner loss, a policy card's
network) only when its operator named it too: ``only_code`` restricts the process to those names,
so a compromised server cannot make a device import and call an arbitrary function.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_allowed: frozenset[str] | None = None  # None: this process runs the code its own configs name
_path_lock = threading.Lock()


def allowed(spec: str) -> bool:
    """Whether ``spec`` was named in the ``only_code`` block now running: the one way a name fedrl
    did not read from the user's own config (a policy card's, a server's) may be imported."""
    return _allowed is not None and spec in _allowed


@contextmanager
def only_code(names: Iterable[str]) -> Iterator[None]:
    """Within the block, import only the user code named in ``names`` (``fedrl client`` and ``fedrl
    act`` run inside one, with their ``--allow-code`` options): any other name is refused, naming
    the option."""
    global _allowed
    before, _allowed = _allowed, frozenset(names)
    try:
        yield
    finally:
        _allowed = before


def import_function(spec: str, folder: str | None, what: str) -> Callable[..., Any]:
    """The user's callable ``"module:function"`` (a setter, a robust rule, a callback factory, a
    network ...), its module imported from ``folder`` first, then the working directory, then
    ``sys.path``; ``ValueError`` in one line naming ``what`` otherwise, or when this process may not
    run it (``only_code``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must look like 'package.module:function', got {spec!r}")
    if _allowed is not None and spec not in _allowed:
        raise ValueError(
            f"{what} {spec!r} is the server's to name but this machine's to allow: it runs only the code its "
            f"operator names (start it with --allow-code {spec}, with the module on its Python path)"
        )
    with _path_lock:  # sys.path is the process's: an acting and a training thread may both import
        saved = list(sys.path)
        sys.path[:0] = ([str(Path(folder))] if folder else []) + [os.getcwd()]
        importlib.invalidate_caches()
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # not found, or the module itself failed to import (SyntaxError, RuntimeError ...)
            raise ValueError(f"cannot load {what} {spec!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path[:] = saved
    if not callable(found):
        raise ValueError(f"{what} {spec!r} is not callable")
    return found
