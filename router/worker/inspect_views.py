"""HTTP lead and rep inspection (`GET /leads/{lead_id}`, `GET /reps`) on any worker.

A lead's qualification state lives on the worker that owns the lead's partition; routing state
(holder, SLA clock, queues) on the worker that owns the single routing partition. A request to
any worker fetches each part locally or from its owner's internal endpoint and joins them with
router.service.inspection. Owners are found through the group's assignor, whose assignment
carries every owner's web URL (`LEADROUTER_WEB_ADVERTISED_URL`, so workers must reach each
other there). The views only read; nothing here changes state.

A lead's records are where its producers put them: on the murmur2 partition of its id when
they use Kafka's default partitioner, elsewhere when they do not (service/partitioning.py).
The lead view looks on the murmur2 partition first, then on every other candidate, and says
when it found the lead elsewhere or on several partitions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from router.domain.lead_state import LeadState
from router.domain.routing_state import RoutingState
from router.service.inspection import lead_view, qualification_part, rep_view, routing_part
from router.service.partitioning import candidate_partitions, murmur2_partition
from router.service.routing_stage import OFFSET_KEY
from router.worker.pipeline.core import LEADS, ROUTING

PROXY_TIMEOUT_SECONDS = 3.0


class NotAvailable(Exception):
    """The part's owner is unknown (rebalancing) or did not answer; maps to HTTP 503."""


def lead_partition(lead_id: str, partitions: int) -> int:
    """The partition a producer's default (murmur2) partitioner picks for this lead_id key:
    the lead-state table is co-partitioned with the input topics, keyed the same way."""
    return murmur2_partition(lead_id.encode(), partitions)


class StateReader(Protocol):
    """A stage's local state by partition (router.worker.app.StageStores)."""

    name: str

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def items(self, partition: int) -> list[tuple[bytes, bytes]]: ...


class Inspector:
    def __init__(self, router_app: Any, lead_state: StateReader,
                 routing_state: StateReader) -> None:
        self.router_app = router_app
        self.lead_state = lead_state
        self.routing_state = routing_state
        self._session: aiohttp.ClientSession | None = None

    @property
    def processor(self) -> Any:
        return self.router_app.processor

    # ---- ownership ---------------------------------------------------------------------------

    def check_settled(self) -> None:
        """During a rebalance a worker may already own a partition whose state is still being
        restored: it would answer "never seen" for a lead it has. Answer 503 instead."""
        processor = self.processor
        if not processor.assigned_once or not processor.core.settled:
            raise NotAvailable("rebalancing or restoring state; try again shortly")

    def _owner_url(self, stage: str, partition: int) -> str:
        assignor = self.router_app.assignor
        url = assignor.routing_owner if stage == ROUTING else assignor.lead_owners.get(partition)
        if not url:
            raise NotAvailable(f"no worker owns {stage} partition {partition} right now"
                               " (rebalancing?)")
        return str(url).rstrip("/")

    async def _fetch(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            timeout = aiohttp.ClientTimeout(total=PROXY_TIMEOUT_SECONDS)
            async with self._session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise NotAvailable(f"{url} answered HTTP {response.status}")
                return await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotAvailable(f"{url} did not answer: {exc!r}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ---- the two parts -----------------------------------------------------------------------

    def local_qualification(self, lead_id: str, partition: int) -> dict[str, Any] | None:
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

    def owns_lead_partition(self, partition: int) -> bool:
        return bool(self.processor.owns(LEADS, partition))

    def owns_routing(self) -> bool:
        return bool(self.processor.owns(ROUTING, 0))

    async def _qualification_on(self, lead_id: str, partition: int) -> dict[str, Any] | None:
        if self.owns_lead_partition(partition):
            return self.local_qualification(lead_id, partition)
        url = self._owner_url(LEADS, partition)
        body = await self._fetch(
            f"{url}/internal/leads/{lead_id}/qualification?partition={partition}")
        return body["qualification"]  # type: ignore[no-any-return]

    async def qualification(self, lead_id: str) -> dict[str, Any] | None:
        """The lead's qualification part from the partition(s) holding it. Found on the
        murmur2 partition only: as stored. Elsewhere or on several: the part with the most
        touchpoints, with where it was found and where it belongs."""
        partitions = self.router_app.settings.partitions
        expected = lead_partition(lead_id, partitions)
        found = [(p, part) for p in candidate_partitions(lead_id.encode(), partitions)
                 if (part := await self._qualification_on(lead_id, p)) is not None]
        if not found:
            return None
        if [p for p, _ in found] == [expected]:
            return found[0][1]
        _partition, part = max(
            found, key=lambda f: f[1]["criteria"]["engagement"]["touchpoints_in_window"])
        return {**part, "partitioning": {
            "murmur2_partition": expected, "found_on_partitions": sorted(p for p, _ in found),
            "note": "this lead's records arrived on a partition its key does not hash to"
                    " (murmur2): a producer uses another partitioner (README, Producers)"}}

    async def routing(self, lead_id: str) -> dict[str, Any] | None:
        if self.owns_routing():
            return routing_part(lead_id, self.local_routing_state())
        url = self._owner_url(ROUTING, 0)
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
        url = self._owner_url(ROUTING, 0)
        return await self._fetch(f"{url}/reps")  # type: ignore[no-any-return]


def _json(body: Any, status: int = 200) -> web.Response:
    """orjson, as faust's web server used: datetimes and the like encode the same way."""
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json")


def register(app: web.Application, inspector: Inspector) -> None:
    """Add the inspection pages to the worker's web server."""

    def unavailable(exc: NotAvailable) -> web.Response:
        return _json({"error": str(exc)}, status=503)

    async def lead(request: web.Request) -> web.Response:
        try:
            return _json(await inspector.lead(request.match_info["lead_id"]))
        except NotAvailable as exc:
            return unavailable(exc)

    async def reps(request: web.Request) -> web.Response:
        try:
            return _json(await inspector.reps())
        except NotAvailable as exc:
            return unavailable(exc)

    def internal(owned: bool, what: str, answer: Callable[[], Any]) -> web.Response:
        """An owner's part, or 503 (the caller retries) while settling or after a move."""
        try:
            inspector.check_settled()
        except NotAvailable as exc:
            return unavailable(exc)
        if not owned:
            return _json({"error": f"{what} partition not owned here"}, status=503)
        return _json(answer())

    async def lead_qualification(request: web.Request) -> web.Response:
        lead_id = request.match_info["lead_id"]
        partitions = inspector.router_app.settings.partitions
        try:
            partition = int(request.query.get("partition", lead_partition(lead_id, partitions)))
        except ValueError:
            return _json({"error": "partition must be an integer"}, status=400)
        return internal(inspector.owns_lead_partition(partition), "lead", lambda: {
            "qualification": inspector.local_qualification(lead_id, partition)})

    async def lead_routing(request: web.Request) -> web.Response:
        lead_id = request.match_info["lead_id"]
        return internal(inspector.owns_routing(), "routing", lambda: {
            "routing": routing_part(lead_id, inspector.local_routing_state())})

    app.router.add_get("/leads/{lead_id}", lead)
    app.router.add_get("/reps", reps)
    app.router.add_get("/internal/leads/{lead_id}/qualification", lead_qualification)
    app.router.add_get("/internal/leads/{lead_id}/routing", lead_routing)
