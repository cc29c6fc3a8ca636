"""CPU threads for the offline models (the bundled SmolLM2 and the MiniLM embedder), and
transformers kept quiet while they load."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .base import ModelError

__all__ = ["cpu_threads", "model_threads", "quiet_transformers", "usable_cores"]

THREADS_VARIABLES = ("PROMPTOPT_LOCAL_THREADS", "PROMPTOPT_TORCH_THREADS")  # the second is the older name


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads() -> int | None:
    """Threads for one offline model in this process, or None for the runtime's own default.

    A runtime uses every core by default; n xdist workers each doing that on a small machine
    oversubscribe the CPU and run slower than one worker, so the cores are split between them.
    `PROMPTOPT_LOCAL_THREADS` (or the older `PROMPTOPT_TORCH_THREADS`) sets the number.
    """
    for variable in THREADS_VARIABLES:
        explicit = os.environ.get(variable, "").strip()
        if explicit:
            try:
                return max(1, int(explicit))
            except ValueError:
                raise ModelError(f"{variable} must be an integer, got {explicit!r}") from None
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").strip()
    if workers.isdigit() and int(workers) > 1:
        return max(1, usable_cores() // int(workers))
    return None


def model_threads() -> int:
    """The threads an offline model gets here: `cpu_threads()`, else every usable core."""
    return cpu_threads() or usable_cores()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and info chatter while loading (tests capture stderr)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
