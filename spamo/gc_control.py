"""Python's cyclic garbage collector around spamo's heavy imports and at the end of the process: the part of a run's
fixed cost that is the interpreter's own bookkeeping (benchmarks/results/run.md, "The garbage collector").

Importing torch, scikit-learn, pandas and anndata creates hundreds of thousands of objects
that live as long as the process. The collector looks for reference cycles every 700 new objects and, every so
often, walks every object there is: during those imports it walks the same long-lived objects again and again, and
when the interpreter exits it walks them all once more before freeing them. Neither walk finds garbage among
modules, classes and functions; together they cost seconds of a 1-epoch `spamo run`.

- `imports_without_gc()`: a block in which the collector waits (objects are still freed by reference counting;
  only the search for cycles waits until the block ends), around the big imports of a run: `spamo.pipeline`'s
  (torch, scikit-learn, pandas: some 280,000 objects) and the preprocessing's. Blocks nest and may run in several
  threads at once: they share one pause, and the collector runs again when the last block ends, if it ran before
  the first, after one full collection when the block left more than `WALK_AFTER` new objects (each object is then
  walked once, not once per generation and again each time the oldest generation grows by a quarter). Small
  imports gain nothing from it.
- `imports_without_gc(freeze=True)`: the same pause, but when it is the last block to end it freezes the objects
  (`gc.freeze()`: moved to the collector's permanent generation, walked by no later collection) instead of walking
  them all; `thaw()` puts them back (`gc.unfreeze()`) when the work that wanted them out of the way ends.
  `pipeline.run` holds such a block over the preprocessing: the full walk that would end it was 0.7 CPU s of some
  435,000 objects when torch's compiler was imported beside it (benchmarks/results/run.md; spamo no longer
  imports the compiler: `spamo._compat.set_deterministic_algorithms`); frozen, the run's collections walk only what
  the run itself creates, and after `thaw()` the objects are collected as they would have been. Nothing is frozen where someone else froze objects already (their freeze is theirs to undo).
- `no_cycle_search_at_exit()`: at exit, `gc.freeze()` moves every object into the collector's permanent generation,
  so the interpreter's shutdown frees what reference counting frees and searches nothing for cycles (the memory goes
  back to the system with the process). What is skipped: the finalisers (`__del__`) of objects that are garbage only
  as part of a reference cycle at that moment, which Python does not promise to run at exit anyway (the language
  reference, `object.__del__`). Registered once; it runs after the exit handlers registered later (atexit order).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import threading
from typing import Iterator

# objects left to the collector by a pause above which it ends with one full collection (a heavy import's hundreds
# of thousands: walked once, instead of once per generation and again each time the oldest grows by a quarter)
WALK_AFTER = 50_000
_LOCK = threading.Lock()
_pauses = 0  # blocks of imports_without_gc now running, in any thread
_resume = False  # whether the collector ran before the first of them
_freeze_registered = False
_frozen_here = False  # whether a freeze-ended pause froze the objects now frozen (thaw() undoes only that)


@contextlib.contextmanager
def imports_without_gc(freeze: bool = False) -> Iterator[None]:
    """Pause the cyclic collector for the block (shared by nested and concurrent blocks; see the module docstring);
    `freeze`: if this block ends the pause, freeze the objects instead of walking them (undone by `thaw()`)."""
    global _pauses, _resume, _frozen_here
    with _LOCK:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _LOCK:
            _pauses -= 1
            if _pauses == 0 and _resume:
                if gc.get_count()[0] > WALK_AFTER:
                    if freeze and (_frozen_here or gc.get_freeze_count() == 0):
                        gc.freeze()  # out of every later walk until thaw()
                        _frozen_here = True
                    else:
                        gc.collect()  # one full walk moves the imported objects to the oldest generation at once
                gc.enable()


def thaw() -> None:
    """Give the objects a freeze-ended pause froze back to the collector (its oldest generation); nothing else."""
    global _frozen_here
    with _LOCK:
        if _frozen_here:
            gc.unfreeze()
            _frozen_here = False


def no_cycle_search_at_exit() -> None:
    """Freeze every object at exit, so that the interpreter's shutdown does not search them for cycles (once)."""
    global _freeze_registered
    with _LOCK:
        if not _freeze_registered:
            atexit.register(gc.freeze)
            _freeze_registered = True
