"""Per-client records: frozen dataclasses whose fields are arrays with a leading client axis.

What clients keep between rounds (a learner's replay buffer, SCAFFOLD's ``c_i``, personal towers,
the update pipeline's error-feedback residuals) and the simulator's asynchronous in-flight record
are such records: a field is an array ``(N, ...)``, ``None`` (not kept in this run), or another
such record. These functions select and replace clients' rows of a whole record, and turn it into
named arrays for a checkpoint and back.

A field's name in the arrays is its ``metadata["key"]`` where it has one (checkpoints keep the
names they were first written with), else its own name; a nested record's names are its field's
key, a dot, and its own names. A nested record's field says its type in ``metadata["record"]``.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

import numpy as np

R = TypeVar("R")


def _key(f) -> str:
    return f.metadata.get("key", f.name)


def take_rows(record: R, rows: np.ndarray) -> R:
    """The record of the clients at ``rows`` (copies of their rows)."""
    return replace(record, **{f.name: _take(getattr(record, f.name), rows) for f in fields(record)})


def _take(value: Any, rows: np.ndarray) -> Any:
    if value is None:
        return None
    return take_rows(value, rows) if is_dataclass(value) else value[rows]


def put_rows(record: R, rows: np.ndarray, part: R) -> R:
    """A copy of ``record`` with the clients at ``rows`` replaced by ``part`` (their rows in order)."""
    return replace(
        record, **{f.name: _put(getattr(record, f.name), rows, getattr(part, f.name)) for f in fields(record)}
    )


def _put(whole: Any, rows: np.ndarray, part: Any) -> Any:
    if whole is None:
        return None
    if is_dataclass(whole):
        return put_rows(whole, rows, part)
    out = whole.copy()
    out[rows] = part
    return out


def write_rows(record: Any, rows: np.ndarray, part: Any) -> None:
    """Write ``part``'s rows into ``record``'s own arrays at ``rows``, in place (``put_rows`` copies)."""
    whole = to_arrays(record)
    for name, value in to_arrays(part).items():
        whole[name][rows] = value


def to_arrays(record: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The record's arrays by name (``prefix`` before each), ``None`` fields left out."""
    arrays: dict[str, np.ndarray] = {}
    for f in fields(record):
        value, name = getattr(record, f.name), prefix + _key(f)
        if value is None:
            continue
        if is_dataclass(value):
            arrays.update(to_arrays(value, name + "."))
        else:
            arrays[name] = value
    return arrays


def from_arrays(cls: type[R], arrays: dict[str, np.ndarray], prefix: str = "") -> R:
    """The record of type ``cls`` that ``to_arrays`` made ``arrays`` from; a field whose names
    are missing is ``None``."""
    values = {}
    for f in fields(cls):
        name = prefix + _key(f)
        nested = f.metadata.get("record")
        if nested is not None:
            values[f.name] = stored_record(nested, arrays, name + ".")
        else:
            values[f.name] = arrays.get(name)
    return cls(**values)


def stored_record(cls: type[R], arrays: dict[str, np.ndarray], prefix: str) -> R | None:
    """The record ``from_arrays`` makes of the arrays under ``prefix``, or None when there are none."""
    return from_arrays(cls, arrays, prefix) if any(k.startswith(prefix) for k in arrays) else None


def copy_rows(record: R) -> R:
    """A copy of the record whose arrays can be written without touching the original's."""
    return replace(record, **{f.name: _copy(getattr(record, f.name)) for f in fields(record)})


def _copy(value: Any) -> Any:
    if value is None:
        return None
    return copy_rows(value) if is_dataclass(value) else value.copy()
