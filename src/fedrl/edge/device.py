"""What every kind of fedrl device shares: its structured log, its fatal errors, its state folder.

Both the learning agent (``fedrl.edge.agent``) and the torch-free inference runtime
(``fedrl.edge.inference``) use these; nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from fedrl.wire import disk
from fedrl.wire.records import Reason, Rejected

log = logging.getLogger("fedrl.edge")
CREDENTIAL_REASONS = (Reason.UNAUTHENTICATED, Reason.PERMISSION_DENIED)
LOCK_FILE = "agent.lock"


def event(level: int, name: str, **fields: object) -> None:
    """Log event ``name`` (snake_case) with its fields as the record's ``fields`` attribute, the
    convention of fedrl's structured logs: ``fedrl client`` writes each as one JSON line."""
    log.log(level, name, extra={"fields": fields})


class Fatal(Exception):
    """A failure that retrying cannot fix: refused credentials, a server whose certificate does not
    verify, an experiment this device cannot train. The message says what to change."""


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir`` for one agent; ``Fatal`` when another agent holds it."""
    with open(disk.private_file(state_dir / LOCK_FILE), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Fatal(f"state dir {state_dir} is in use by another agent") from None
        yield


def refused_credentials(exc: Rejected) -> Fatal:
    """The ``Fatal`` a refusal of the device's credentials ends its run with."""
    return Fatal(
        f"the server refused this client ({exc.reason.value}): {exc.message}; check the token and the client name"
    )


def load_callable(spec: str, search_dir: Path | None, what: str) -> Callable:
    """The device owner's ``module:function`` (``what`` names the option, for errors): its module is
    looked up in ``search_dir`` first when one is given, else on the Python path and then in the
    working directory (last, so a stray file there cannot shadow an installed module);
    ``ValueError`` naming ``what`` when it cannot be loaded."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must look like 'package.module:function', got {spec!r}")
    if search_dir is not None:
        if str(search_dir) not in sys.path:
            sys.path.insert(0, str(search_dir))
    elif str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {spec}: cannot load it: {exc}") from None
    if not callable(found):
        raise ValueError(f"{what} {spec} is not callable")
    return found
