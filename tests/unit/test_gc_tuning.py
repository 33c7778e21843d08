"""router.gc_tuning: the replay's collector settings are scoped, the worker's are not."""

from __future__ import annotations

import gc

from router.gc_tuning import YOUNG_COLLECTION_EVERY, bulk_work


def test_bulk_work_freezes_and_raises_the_young_threshold_then_restores_both() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with bulk_work():
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
        assert gc.get_freeze_count() > frozen_before  # what was loaded is out of collections
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_bulk_work_restores_the_settings_when_the_replay_fails() -> None:
    before = gc.get_threshold()
    try:
        with bulk_work():
            raise RuntimeError("a replay that fails")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
