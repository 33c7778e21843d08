"""A task's local store (router.worker.pipeline.store): meta keys never show as state, the
RocksDB store keeps what it applied across a reopen (so a restart replays only the tail),
and wiping starts from nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.worker.pipeline.store import (
    INPUT_OFFSETS,
    MemoryStore,
    RocksStore,
    encode_offsets,
    open_store,
)


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_state_meta_keys_and_deletes(kind: str, tmp_path: Path) -> None:
    store = open_store(kind, str(tmp_path), "app", "leads-0")
    store.write([(b"L-1", b"a"), (b"L-2", b"b"), (INPUT_OFFSETS, encode_offsets({"t": 7}))], 41)
    store.write([(b"L-2", None), (b"L-3", b"c")], 42)
    assert store.get(b"L-1") == b"a" and store.get(b"L-2") is None
    assert sorted(store.items()) == [(b"L-1", b"a"), (b"L-3", b"c")]  # no meta key
    assert store.input_offsets == {"t": 7}
    assert store.changelog_offset == (42 if kind == "rocksdb" else None)
    store.wipe()
    assert list(store.items()) == [] and store.input_offsets == {}
    store.close()


def test_rocksdb_survives_a_reopen_with_its_changelog_offset(tmp_path: Path) -> None:
    path = tmp_path / "leads-3.rocksdb"
    store = RocksStore(path)
    store.write([(b"L-1", b"a"), (INPUT_OFFSETS, encode_offsets({"t": 3}))], 99)
    store.close()
    again = RocksStore(path)
    assert again.get(b"L-1") == b"a" and again.changelog_offset == 99
    assert again.input_offsets == {"t": 3}
    again.close()


def test_memory_store_starts_empty_every_time() -> None:
    assert MemoryStore().changelog_offset is None  # the whole changelog is replayed
