"""Builders shared by unit test modules: plain events and records, no Kafka.

Builders used by one test module stay in it; the ones several modules use live here, so no
test module imports another (the tools' small history is in tools_fixtures.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from router.adapters.topics import Topics
from router.service.qualifier import Record

TOPICS = Topics.with_prefix("")
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday


# --------------------------------------------------------------------------------------------
# Sales activity (the leads stage forwards it, the routing stage applies it)
# --------------------------------------------------------------------------------------------


def activity(lead: str, rep_id: str, type: str, *, at: datetime = NOW,
             reason: str | None = None, event_id: str = "sa-1") -> dict[str, Any]:
    data: dict[str, Any] = {"event_id": event_id, "lead_id": lead, "rep_id": rep_id,
                            "type": type, "occurred_at": at.isoformat()}
    if reason is not None:
        data["reason"] = reason
    return data


def activity_input(offset: int, data: Mapping[str, Any], partition: int = 3) -> Record:
    """A record as it arrives on sales.activity."""
    return Record(TOPICS.activity, partition, offset, str(data["lead_id"]).encode(),
                  orjson.dumps(data))
