"""Ends the Ray processes a driver started, once the driver is gone (`python reaper.py DRIVER_PID [EXCLUDED,...]`).

A driver that starts its own Ray (`search.ray_cluster.connect` without an address) starts this process right after
`ray.init`. Ray's GCS and raylet share the driver's fate, but its dashboard and runtime-env agents outlive a
SIGKILLed driver (observed with Ray 2.60: both ignore the raylet's end and SIGTERM). The reaper remembers, every
second, the processes descending from the driver's children of that moment (the Ray processes `ray.init` just
started, and what they start later; children the driver had before `ray.init` are excluded), identified by process
id and start time. When its stdin - a pipe only the
driver holds - reaches end of file (the driver exited, was killed, or called `ray_cluster.disconnect`), it waits a
few seconds for Ray's own shutdown and SIGKILLs those of them still running. It imports nothing heavy and never
selects a process by name.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

GRACE_S = 3.0
SCAN_S = 1.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _processes() -> dict[int, tuple[int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                out[int(entry)] = stat
    return out


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def main(driver: int, exclude: set[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the driver, which then shuts Ray down itself
    me = os.getpid()
    table = _processes()
    roots = {pid for pid, (ppid, _) in table.items() if ppid == driver and pid != me and pid not in exclude}
    known: dict[int, int] = {}  # pid -> start time
    while True:
        table = _processes()
        for pid in _descendants({p for p in roots if p in table}, table) | {p for p in known if p in table}:
            if pid in table and pid != me:
                known.setdefault(pid, table[pid][1])
        roots |= {pid for pid in known if pid in table}
        ready, _, _ = select.select([sys.stdin], [], [], SCAN_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    time.sleep(GRACE_S)
    for pid, started in known.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:  # the same process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]), {int(p) for p in sys.argv[2].split(",") if p} if len(sys.argv) > 2 else set())
