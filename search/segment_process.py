"""Run one call, `function(argument)`, in a fresh Python process that ends with it: how each segment of a search
(search.segments) gets its Ray Tune controller, so that what a segment's Tuner, Trials and searcher leave in the
allocator, in Ray's core worker and in Optuna's caches goes back to the system when the segment ends
(benchmarks/results/tune.md, "Driver memory": a process that only starts and ends Ray actors keeps growing).

The parent (`run_in_child`) starts a new interpreter running `main` below (never a fork: the parent
holds Ray's threads and sockets), and writes to its stdin its own `sys.path` (so that what the call refers to by
module, a test's or a notebook's classes included, imports there as here) and the call, pickled with Ray's
cloudpickle (functions and classes of the parent's `__main__` travel by value). The child answers on a pipe of its
own: the pickled return value, which the parent returns (None when the child ended without one). The child's
output and errors are copied line by line to the parent's `sys.stdout` and `sys.stderr`, so they show wherever the
parent's show (a terminal, a notebook, a test's capture).

The child dies with the parent: a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`) and, on any
system, a thread that waits for end of file on its stdin, a pipe only the parent holds open. Ctrl+C reaches the
parent only (the child runs in its own process group) and the parent passes each one on, so that the child (Ray
Tune, which stops a search cleanly at the first and hard at the second) sees exactly what the user typed, in a
terminal or in a notebook (whose interrupt signals the kernel alone).

This module imports nothing heavy but scipy's sparse module (through spamo._compat, 0.3 s, which the call imports
anyway): the child reads its call before the call's imports (seconds) begin.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spamo._compat import new_process_group

PR_SET_PDEATHSIG = 1  # linux/prctl.h
FRAME = struct.Struct("!Q")  # length prefix of each message on the child's stdin
# The child imports this very `search` package (the folder holding it goes first on its path), whatever its folder
CHILD_START = ("import sys; sys.path.insert(0, sys.argv[1]); from search.segment_process import main; "
               "main(*sys.argv[2:])")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
JOIN_S = 30.0  # how long the parent waits for the child's output and reply after the child exited


@dataclass
class ChildRun:
    """What `run_in_child` saw: the call's return value (None when the child sent none), the child's process id
    and exit status, and when it was started and when it had ended (time.time())."""

    value: object
    pid: int
    returncode: int
    started_at: float
    ended_at: float


def run_in_child(function, argument) -> ChildRun:
    """`function(argument)` in a new Python process (see the module docstring); waits for it to end."""
    from ray import cloudpickle

    reply_read, reply_write = os.pipe()
    started = time.time()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_START, PACKAGE_ROOT, str(os.getpid()), str(reply_write)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(reply_write,),
            env=dict(os.environ, PYTHONUNBUFFERED="1"), **new_process_group())
    finally:
        os.close(reply_write)
    reply = bytearray()
    threads = [threading.Thread(target=_copy_lines, args=(child.stdout, sys.stdout), daemon=True),
               threading.Thread(target=_copy_lines, args=(child.stderr, sys.stderr), daemon=True),
               threading.Thread(target=_read_all, args=(reply_read, reply), daemon=True),
               # the call is written from a thread too: a large one fills the pipe until the child reads it
               threading.Thread(target=_send, args=(child.stdin, [pickle.dumps(sys.path),
                                                                  cloudpickle.dumps((function, argument))]),
                                daemon=True)]
    for thread in threads:
        thread.start()
    returncode = _wait_passing_on_interrupts(child)
    ended = time.time()
    for thread in threads:  # done once the child has exited, unless a process it started still holds its pipes
        thread.join(timeout=JOIN_S)
    child.stdin.close()
    return ChildRun(cloudpickle.loads(bytes(reply)) if reply else None, child.pid, returncode, started, ended)


def _wait_passing_on_interrupts(child: subprocess.Popen) -> int:
    """Wait for the child; each Ctrl+C (KeyboardInterrupt here) is passed on to it as SIGINT."""
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)


def _copy_lines(source, stream) -> None:
    for line in iter(source.readline, b""):
        stream.write(line.decode(errors="replace"))
        stream.flush()
    source.close()


def _read_all(fd: int, into: bytearray) -> None:
    with os.fdopen(fd, "rb") as pipe:
        into.extend(pipe.read())


def _send(pipe, messages: list[bytes]) -> None:
    """Write the framed messages and keep the pipe open: its end of file tells the child this process is gone."""
    try:
        for message in messages:
            pipe.write(FRAME.pack(len(message)) + message)
        pipe.flush()
    except BrokenPipeError:  # the child ended before it read its call: its exit status tells the rest
        pass


# ------------------------------------------------------------------------------------------------ the child


def die_with_parent(parent: int) -> None:
    """End this process (SIGKILL) when `parent` ends: the kernel's parent-death signal where there is one, and a
    thread that waits for end of file on stdin (which only the parent holds open) everywhere."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (AttributeError, OSError, TypeError):  # not Linux: the stdin watch alone
        pass
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os.kill(os.getpid(), signal.SIGKILL)


def _watch_stdin() -> None:
    while os.read(0, 65536):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _receive() -> bytes:
    """One framed message from stdin (read from the descriptor itself: Python's buffered stdin would keep a lock
    that the watching thread holds at exit)."""
    (size,) = FRAME.unpack(_read_exactly(FRAME.size))
    return _read_exactly(size)


def _read_exactly(size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(0, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the parent process ended before it sent the call")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main(parent: str, reply_fd: str) -> None:
    """The child's side (see the module docstring); its arguments as the parent's command line gives them."""
    die_with_parent(int(parent))
    parent_path = pickle.loads(_receive())
    sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]
    call = _receive()
    threading.Thread(target=_watch_stdin, daemon=True).start()
    from ray import cloudpickle

    function, argument = cloudpickle.loads(call)
    value = function(argument)
    with os.fdopen(int(reply_fd), "wb") as reply:
        reply.write(cloudpickle.dumps(value))
