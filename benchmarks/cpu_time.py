"""CPU time of this process, shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is
on sys.path)."""

from __future__ import annotations

import resource


def cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) used by this process so far: less sensitive than wall time to
    other processes sharing the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
