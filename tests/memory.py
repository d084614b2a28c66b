"""A process's peak resident memory, measured between two points (Linux's /proc).

``ru_maxrss`` will not do: it survives exec, so a child starts with its parent's peak. Tests
run their measurements in a child (``python -c`` with :data:`IMPORT` first) or in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

MEASURABLE = os.path.exists("/proc/self/clear_refs")
IMPORT = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from memory import peak, reset_peak\n"
"""The first line of a child's script that measures."""


def peak() -> int | None:
    """This process's peak resident memory in bytes since :func:`reset_peak`; ``None`` where
    the system does not say."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def reset_peak() -> None:
    """Start measuring the peak afresh (Linux 4.0+); nothing where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
