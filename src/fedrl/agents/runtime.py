"""Process-wide settings that make client-batched training fast on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Stop glibc from mapping and unmapping large tensors on every training step.

    With glibc's default thresholds each multi-megabyte activation is a fresh ``mmap`` and
    ``munmap``, which measured 1.5-1.75x slower training on a 2-core machine.
    Returns False where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, threshold_bytes) and mallopt(_M_TRIM_THRESHOLD, threshold_bytes)
    return bool(ok)


def set_threads(n: int) -> None:
    """Let torch's CPU kernels use ``n`` threads when called from this thread (a device owner's
    budget for training; the setting is the calling thread's, as OpenMP's is)."""
    torch.set_num_threads(n)


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Within the block, torch's CPU kernels use ``n`` threads (None: as they were); the count
    before is restored after, so one run's setting never leaks into what the process does next."""
    before = torch.get_num_threads()
    if n is not None:
        set_threads(n)
    try:
        yield
    finally:
        set_threads(before)


def torch_threads() -> int:
    """The threads torch's CPU kernels use when called from this thread."""
    return torch.get_num_threads()
