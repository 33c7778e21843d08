"""A task's local state: a memory dict, or a RocksDB database under data_dir
(`LEADROUTER_STORE=rocksdb`), always with a compacted changelog topic as the source of truth.

Meta keys start with 0xFF, a byte that never occurs in UTF-8, so no lead id or routing key can
collide with them (keys of state are lead ids, always valid UTF-8):
  INPUT_OFFSETS  written to the changelog in every batch, in the same transaction as the
                 state and the committed offsets: where the task resumes (core.resume_positions)
  CHANGELOG_AT   RocksDB only, never in the changelog: the last changelog offset applied, so a
                 restart on the same data dir replays only the changelog after it

State is written only after the batch is committed (processor.py): a store never holds a write
whose transaction could still abort (a task's next batch reads those through pending.py).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

META = b"\xff"
INPUT_OFFSETS = META + b"input-offsets"
CHANGELOG_AT = META + b"changelog-offset"


def encode_offsets(offsets: Mapping[str, int]) -> bytes:
    return orjson.dumps(dict(offsets))


def decode_offsets(raw: bytes | None) -> dict[str, int]:
    if raw is None:
        return {}
    value = orjson.loads(raw)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


class StateView(Protocol):
    """What a stage's handler reads: a store, or a store with the writes its task decided
    and has not committed yet over it (pending.py)."""

    def get(self, key: bytes) -> bytes | None: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...


class PartitionStore(StateView, Protocol):
    def write(self, writes: Iterable[tuple[bytes, bytes | None]],
              changelog_offset: int | None) -> None: ...

    @property
    def changelog_offset(self) -> int | None: ...

    @property
    def input_offsets(self) -> dict[str, int]: ...

    def close(self) -> None: ...

    def wipe(self) -> None: ...


class MemoryStore:
    """A dict; restored from the whole changelog on every assignment."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._inputs: bytes | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from list(self._data.items())  # a copy: callers may await between items

    def write(self, writes: Iterable[tuple[bytes, bytes | None]],
              changelog_offset: int | None) -> None:
        data = self._data
        for key, value in writes:
            if key == INPUT_OFFSETS:
                self._inputs = value
            elif value is None:
                data.pop(key, None)
            else:
                # a right-sized copy: orjson (>= 3.12) returns bytes in a buffer rounded up to
                # a power of two, at least 4 KiB, and never shrinks it, so 700-byte lead states
                # kept as produced held ~8 KiB each (1.1 GB for 100k leads); the copy costs
                # ~0.3 µs (orjson issue #483, home-assistant/core#181240 do the same)
                data[key] = bytes(memoryview(value))

    @property
    def changelog_offset(self) -> int | None:
        return None  # nothing survives the process: replay everything

    @property
    def input_offsets(self) -> dict[str, int]:
        return decode_offsets(self._inputs)

    def close(self) -> None:
        self._data = {}

    def wipe(self) -> None:
        self._data, self._inputs = {}, None

    def __len__(self) -> int:
        return len(self._data)


# Every task's database shares one block cache and one memtable budget, charged to that cache
# (Kafka Streams' BoundedMemoryRocksDBConfig does the same), so a worker's RocksDB memory is
# `LEADROUTER_ROCKSDB_MEMORY_MB` whatever its task count. RocksDB's defaults give each database
# 64 MiB memtables (two of them) and its own cache: with 9 tasks a worker loading a million leads
# reached 1,066 MB RSS. Measured with a million leads (README, Measured): 256 MB -> 548 MB peak
# RSS at 11.7k ev/s, 64 MB -> 274 MB at 8.5k ev/s.
_SHARED: dict[int, tuple[Any, Any]] = {}


def _bounded_options(memory_mb: int) -> Any:
    from rocksdict import BlockBasedOptions, Cache, Options, WriteBufferManager

    budget = memory_mb * 1024 * 1024
    if memory_mb not in _SHARED:
        cache = Cache(budget)
        memtables = WriteBufferManager.new_write_buffer_manager_with_cache(
            budget // 2, False, cache)  # memtables may use half of it
        _SHARED[memory_mb] = (cache, memtables)
    cache, memtables = _SHARED[memory_mb]
    options = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_manager(memtables)
    options.set_write_buffer_size(min(16 * 1024 * 1024, max(1024 * 1024, budget // 8)))
    options.set_max_write_buffer_number(2)
    return options


class RocksStore:
    """One RocksDB database per task; the state and CHANGELOG_AT go in one atomic write."""

    def __init__(self, path: Path, memory_mb: int = 256) -> None:
        self.path = path
        self.memory_mb = memory_mb
        self._db = self._open()

    def _open(self) -> Any:
        from rocksdict import Rdict  # imported here: the memory store needs none

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return Rdict(str(self.path), _bounded_options(self.memory_mb))

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if key.startswith(META):
                return  # 0xFF sorts last: only meta keys are left
            yield key, value

    def write(self, writes: Iterable[tuple[bytes, bytes | None]],
              changelog_offset: int | None) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in writes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(CHANGELOG_AT, str(changelog_offset).encode())
        self._db.write(batch)

    @property
    def changelog_offset(self) -> int | None:
        raw = self._db.get(CHANGELOG_AT)
        return int(raw) if raw is not None else None

    @property
    def input_offsets(self) -> dict[str, int]:
        return decode_offsets(self._db.get(INPUT_OFFSETS))

    def close(self) -> None:
        self._db.close()

    def wipe(self) -> None:
        """The changelog is behind what this directory says it applied (topic recreated):
        start this task's state from nothing."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()


def open_store(kind: str, data_dir: str, app_id: str, task: str,
               rocksdb_memory_mb: int = 256) -> MemoryStore | RocksStore:
    if kind == "rocksdb":
        return RocksStore(Path(data_dir) / app_id / "state" / f"{task}.rocksdb",
                          rocksdb_memory_mb)
    return MemoryStore()
