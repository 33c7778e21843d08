"""How often CPython's cyclic garbage collector runs, for bulk work and for the worker.

By default the collector looks at young objects every 700 container allocations and, as the
heap grows by a quarter, walks every live object. A replay holds the whole history and one
state per lead, and decoding an event allocates a dozen containers that die within
microseconds: measured on 200k synthetic events, collection took half of decoding's time
(3.3 s of CPU against 1.5 s with the settings below). Collecting young objects every 100k
allocations lets nearly all of them die by reference count first, and freezing what is
already loaded keeps it out of every later full collection.

Nothing here needs the cyclic collector to run promptly: the domain holds no reference
cycles and nothing relies on `__del__`; the few cycles (exception tracebacks) are still
collected, a little later. Memory stays bounded by the young threshold times the size of a
small container.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_COLLECTION_EVERY = 100_000  # container allocations between young collections
_OLDER = (50, 100)  # middle collections per 50 young ones; oldest per 100 middle ones


def tune_for_throughput() -> None:
    """For a long-running process once it has loaded its code and settings: freeze what is
    loaded (modules, rules) and collect young objects less often. Restored state comes later
    and needs no freezing: the stores keep it as bytes, which the collector never walks."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *_OLDER)


@contextmanager
def bulk_work() -> Iterator[None]:
    """Around a replay: the loaded history is frozen (it lives as long as the replay, and
    forked workers then share its pages instead of touching them), settings restored after.
    `leadrouter simulate` runs its whole command inside one (reading the history and the
    routing simulation allocate as much): the replay's own, nested, restores the outer one's
    threshold on leaving, and unfreezing early only lets full collections walk more."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *_OLDER)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
