"""router.notify.consumer without a broker: the bounded dedupe set and handover cache, record
decoding, and the dispatch of records that never reach the webhook."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.notify.consumer import LruCache, NotifyConfig, RecentIds, decode_event
from tests.unit.notify_events import sla_event, sql_transition


def test_recent_ids_and_lru_are_bounded() -> None:
    ids = RecentIds(3)
    for i in range(5):
        ids.add(f"e{i}")
    assert len(ids) == 3 and "e0" not in ids and "e1" not in ids and "e4" in ids
    ids.add("e2")  # touched: now the newest
    ids.add("e5")
    assert "e2" in ids and "e3" not in ids
    cache = LruCache(2)
    cache.put("a", {"x": 1})
    cache.put("b", {"x": 2})
    cache.put("c", {"x": 3})
    assert cache.get("a") is None and cache.get("c") == {"x": 3} and len(cache) == 2


def test_decode_event() -> None:
    assert decode_event(b'{"type": "sla.warning"}') == {"type": "sla.warning"}
    for raw, why in ((None, "null"), (b"{oops", "JSON"), (b"[1]", "object"),
                     (b"\xff\xfe", "JSON")):
        with pytest.raises(ValueError, match=why):
            decode_event(raw)



async def test_dispatch_skips_junk_and_logs_each_unknown_type_once(
    caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from router.notify.consumer import Notifier

    notifier = Notifier(NotifyConfig(webhook_url="http://127.0.0.1:1/x"))
    topics = notifier.topics

    def record(topic: str, value: Any, offset: int = 0) -> Any:
        raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        return SimpleNamespace(topic=topic, partition=0, offset=offset, value=raw)

    junk = [
        record(topics.sla, {"type": "lead.teleported"}),
        record(topics.sla, {"type": "lead.teleported"}),
        record(topics.assignments, {"type": "lead.vanished"}),
        record(topics.sla, sla_event("sla.met", response_seconds=1.0)),
        record(topics.assignments, b"{not json"),
        record(topics.assignments, None),  # a tombstone
        record(topics.transitions, sql_transition()),
        record(topics.transitions, {**sql_transition(), "type": "lead.mql", "handover": None}),
    ]
    with caplog.at_level("WARNING", logger="router.notify"):
        for r in junk:  # none of these reaches the poster (None would fail)
            assert await notifier._handle(None, r, None, None) == "skipped"  # type: ignore[arg-type]
    unknown = [r for r in caplog.records if r.getMessage().startswith("unknown event type")]
    assert sorted(r.__dict__["type"] for r in unknown) == ["lead.teleported", "lead.vanished"]
    assert notifier.stats == {"unknown_type": 3, "skipped": 2, "undecodable": 2,
                              "handover_cached": 1}
    assert notifier.subscribed == [topics.assignments, topics.sla, topics.transitions]
    cached = notifier._handovers.get("L-1001:1")
    assert cached is not None and cached["name"] == "A. R."
