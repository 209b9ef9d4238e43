"""Process figures read from ``/proc`` (Linux): CPU time, current and peak RSS."""

from __future__ import annotations

import math
import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of the whole process (all threads, live and exited), seconds.

    ``/proc/<pid>/stat`` fields 14 and 15, in clock ticks (1/``SC_CLK_TCK`` s, usually 10 ms):
    phases are long enough (tens of generations) for that resolution."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    # the command name (field 2) is in parentheses and may contain spaces
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status_kb(pid: int | str, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def rss_kb(pid: int | str = "self") -> float:
    """Current resident set size (VmRSS), KiB."""
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM), KiB."""
    return _status_kb(pid, "VmHWM")
