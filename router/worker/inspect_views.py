"""HTTP lead and rep inspection (`GET /leads/{lead_id}`, `GET /reps`) on any worker.

A lead's qualification state lives on the worker that owns the lead's partition; routing state
(holder, SLA clock, queues) on the worker that owns the single routing partition. A request to
any worker fetches each part locally or from its owner's internal endpoint and joins them with
router.service.inspection. Owners are found through faust's partition assignor, which knows
every worker's web URL (`LEADROUTER_WEB_HOST`/`PORT`, so workers must reach each other there).
The views only read; nothing here changes state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import faust
from aiokafka.partitioner import murmur2
from faust.types import TP

from router.adapters.state_store import FaustTableState
from router.domain.qualification import LeadState
from router.domain.routing import RoutingState
from router.service.inspection import lead_view, qualification_part, rep_view, routing_part
from router.service.routing_stage import OFFSET_KEY

PROXY_TIMEOUT_SECONDS = 3.0


class NotAvailable(Exception):
    """The part's owner is unknown (rebalancing) or did not answer; maps to HTTP 503."""


def lead_partition(lead_id: str, partitions: int) -> int:
    """The partition a producer's default (murmur2) partitioner picks for this lead_id key:
    the lead-state table is co-partitioned with the input topics, keyed the same way."""
    return int(murmur2(lead_id.encode()) & 0x7FFFFFFF) % partitions


class Inspector:
    def __init__(self, router_app: Any, lead_state: FaustTableState,
                 routing_state: FaustTableState) -> None:
        self.router_app = router_app
        self.lead_state = lead_state
        self.routing_state = routing_state

    @property
    def app(self) -> Any:
        return self.router_app.app

    # ---- ownership ---------------------------------------------------------------------------

    def check_settled(self) -> None:
        """During a rebalance a worker may already own a partition whose state is still being
        restored: it would answer "never seen" for a lead it has. Answer 503 instead."""
        app = self.app
        if getattr(app, "rebalancing", False) or not app.tables.recovery.completed.is_set():
            raise NotAvailable("rebalancing or restoring state; try again shortly")

    def _owns(self, topic: str, partition: int) -> bool:
        try:
            return TP(topic, partition) in self.app.consumer.assignment()
        except Exception:  # consumer not started
            return False

    def _owner_url(self, table: Any, partition: int) -> str:
        topic = table.changelog_topic.get_topic_name()
        for host, topics in self.app.assignor.table_metadata(topic).items():
            if partition in topics.get(topic, ()):
                return str(host).rstrip("/")
        raise NotAvailable(f"no worker owns {topic}[{partition}] right now (rebalancing?)")

    async def _fetch(self, url: str) -> Any:
        try:
            timeout = aiohttp.ClientTimeout(total=PROXY_TIMEOUT_SECONDS)
            async with self.app.http_client.get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise NotAvailable(f"{url} answered HTTP {response.status}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotAvailable(f"{url} did not answer: {exc!r}") from exc

    # ---- the two parts -----------------------------------------------------------------------

    def local_qualification(self, lead_id: str) -> dict[str, Any] | None:
        partition = lead_partition(lead_id, self.router_app.settings.partitions)
        raw = self.lead_state.get(partition, lead_id.encode())
        if raw is None:
            return None
        ra = self.router_app
        return qualification_part(LeadState.from_bytes(raw), ra.rules,
                                  lambda domain: domain in ra.accounts.values)

    def local_routing_state(self) -> RoutingState:
        state: RoutingState | None = self.router_app.routing.state
        if state is not None:
            return state
        records = {k.decode(): v for k, v in self.routing_state.items(0)
                   if k.decode() != OFFSET_KEY}
        return RoutingState.load(records)

    def owns_lead(self, lead_id: str) -> bool:
        ra = self.router_app
        return self._owns(ra.topics.touchpoints, lead_partition(lead_id, ra.settings.partitions))

    def owns_routing(self) -> bool:
        return self._owns(self.router_app.topics.routing, 0)

    async def qualification(self, lead_id: str) -> dict[str, Any] | None:
        if self.owns_lead(lead_id):
            return self.local_qualification(lead_id)
        partition = lead_partition(lead_id, self.router_app.settings.partitions)
        url = self._owner_url(self.lead_state.table, partition)
        body = await self._fetch(f"{url}/internal/leads/{lead_id}/qualification")
        return body["qualification"]  # type: ignore[no-any-return]

    async def routing(self, lead_id: str) -> dict[str, Any] | None:
        if self.owns_routing():
            return routing_part(lead_id, self.local_routing_state())
        url = self._owner_url(self.routing_state.table, 0)
        body = await self._fetch(f"{url}/internal/leads/{lead_id}/routing")
        return body["routing"]  # type: ignore[no-any-return]

    async def lead(self, lead_id: str) -> dict[str, Any]:
        self.check_settled()
        return lead_view(lead_id, await self.qualification(lead_id), await self.routing(lead_id))

    async def reps(self) -> dict[str, Any]:
        self.check_settled()
        if self.owns_routing():
            return rep_view(self.router_app.reps.values, self.local_routing_state(),
                            datetime.now(UTC))
        url = self._owner_url(self.routing_state.table, 0)
        return await self._fetch(f"{url}/reps")  # type: ignore[no-any-return]


def register(app: faust.App, inspector: Inspector) -> None:
    """Add the inspection pages to the faust web server."""

    def unavailable(web: Any, exc: NotAvailable) -> Any:
        return web.json({"error": str(exc)}, status=503)

    @app.page("/leads/{lead_id}")
    async def lead(web: Any, request: Any, lead_id: str) -> Any:
        try:
            return web.json(await inspector.lead(lead_id))
        except NotAvailable as exc:
            return unavailable(web, exc)

    @app.page("/reps")
    async def reps(web: Any, request: Any) -> Any:
        try:
            return web.json(await inspector.reps())
        except NotAvailable as exc:
            return unavailable(web, exc)

    def internal(web: Any, owned: bool, what: str, answer: Any) -> Any:
        """An owner's part, or 503 (the caller retries) while settling or after a move."""
        try:
            inspector.check_settled()
        except NotAvailable as exc:
            return unavailable(web, exc)
        if not owned:
            return web.json({"error": f"{what} partition not owned here"}, status=503)
        return web.json(answer())

    @app.page("/internal/leads/{lead_id}/qualification")
    async def lead_qualification(web: Any, request: Any, lead_id: str) -> Any:
        return internal(web, inspector.owns_lead(lead_id), "lead", lambda: {
            "qualification": inspector.local_qualification(lead_id)})

    @app.page("/internal/leads/{lead_id}/routing")
    async def lead_routing(web: Any, request: Any, lead_id: str) -> Any:
        return internal(web, inspector.owns_routing(), "routing", lambda: {
            "routing": routing_part(lead_id, inspector.local_routing_state())})
