"""The bench's synthetic load: a roster, the touchpoint/profile mix, probe leads, producing it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from router import __version__
from router.adapters.topics import Topics
from router.domain.events import Rep
from router.domain.rules import load_rules
from router.records import Record
from router.service.qualifier import Qualifier
from router.tools.traffic_model import BEHAVIOUR, PEOPLE, TOPICS, TrafficGenerator, _pick, _rep

MIN_TOUCHPOINT_BYTES = 200
MAX_TOUCHPOINT_BYTES = 400
REPS_PER_POOL = 10
REP_CAPACITY = 1_000_000  # room for every lead: assignments never queue
POOL_STAFF: dict[str, tuple[list[str], list[str]]] = {  # languages, time zones
    "NA": (["en", "fr", "es"], ["America/New_York", "America/Chicago", "America/Toronto"]),
    "LATAM": (["es", "pt"], ["America/Mexico_City", "America/Sao_Paulo"]),
    "EMEA": (["de", "fr", "it", "es", "nl", "en"], ["Europe/Berlin", "Europe/London"]),
    "APAC": (["ja", "hi", "en"], ["Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney"]),
    "global": (["en"], ["UTC"]),
}


def _pad(event: dict[str, Any], size: int) -> bytes:
    """The event as JSON of at least `size` bytes, padded with a user-agent property."""
    raw = orjson.dumps(event)
    missing = size - len(raw) - len(',"user_agent":""')
    if missing > 0:
        event["properties"]["user_agent"] = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"
                                             " (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
                                             * 4)[:missing]
        raw = orjson.dumps(event)
    return bytes(memoryview(raw))  # right-sized: orjson's buffers are >= 4 KiB (store.py)


def bench_roster(now: datetime) -> list[tuple[bytes, bytes]]:
    """10 reps in each pool of the default rules (territories + fallback), validated as Rep.
    Rep ids R-01.. so the traffic's named accounts (owners R-03, R-05, R-08) have owners."""
    rules = load_rules(None)
    pools = [t.pool for t in rules.routing.territories] + [rules.routing.fallback_pool]
    out = []
    n = 0
    for pool in dict.fromkeys(pools):
        languages, zones = POOL_STAFF.get(pool, (["en"], ["UTC"]))
        for i in range(REPS_PER_POOL):
            n += 1
            rep = _rep(f"R-{n:02d}", f"Bench Rep {n}", [pool],
                       sorted({languages[i % len(languages)], "en"}), zones[i % len(zones)],
                       max_open_leads=REP_CAPACITY)
            Rep.model_validate(rep)
            out.append((rep["rep_id"].encode(), orjson.dumps(rep)))
    return out


@dataclass
class Mix:
    """Pre-encoded records: profiles are set-up, touchpoints are what gets measured."""

    profiles: list[tuple[bytes, bytes]]
    touchpoints: list[tuple[bytes, bytes]]
    reps: list[tuple[bytes, bytes]]
    accounts: list[tuple[bytes, bytes]]
    generator: TrafficGenerator
    rng: random.Random
    sequence: int = 0

    @property
    def pools(self) -> int:
        return len({p for _, v in self.reps for p in orjson.loads(v)["pools"]})

    def more_touchpoints(self, count: int, now: datetime) -> list[tuple[bytes, bytes]]:
        """New touchpoints (fresh event ids) of the same leads, in random lead order."""
        population = self.generator.population
        leads = [population[i % len(population)] for i in range(self.sequence,
                                                                 self.sequence + count)]
        self.rng.shuffle(leads)
        out = []
        for lead in leads:
            self.sequence += 1
            out.append(self._touchpoint(lead.lead_id, lead.temperament,
                                        lead.profile["company"]["domain"], now))
        return out

    def _touchpoint(self, lead_id: str, temperament: str, domain: str, now: datetime
                    ) -> tuple[bytes, bytes]:
        rng = self.rng
        kind = _pick(rng, BEHAVIOUR[temperament])
        props: dict[str, Any] = {"topic": rng.choice(TOPICS),
                                 "url": f"/{kind.replace('_', '-')}/{rng.randrange(1000)}",
                                 "session_id": f"{rng.getrandbits(64):016x}"}
        if kind == "quiz_completed":
            props["score"] = rng.randint(40, 100)
        occurred = now - timedelta(seconds=rng.uniform(0, 3 * 86400))
        event = {"event_id": f"bt-{self.generator.seed}-{self.sequence}", "lead_id": lead_id,
                 "type": kind, "occurred_at": _iso(occurred), "channel": "web",
                 "account_domain": domain, "properties": props}
        size = rng.randint(MIN_TOUCHPOINT_BYTES, MAX_TOUCHPOINT_BYTES)
        return lead_id.encode(), _pad(event, size)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_mix(leads: int, touchpoints: int, now: datetime, seed: int = 11) -> Mix:
    """`leads` synthetic leads (traffic_model.py's population: companies, roles, temperaments), one
    profile each, and `touchpoints` touchpoints spread evenly over them in random order."""
    generator = TrafficGenerator(leads=leads, seed=seed, bad_event_share=0.0)
    updated = _iso(now - timedelta(days=4))
    profiles = [(lead.lead_id.encode(),
                 bytes(memoryview(orjson.dumps(dict(lead.profile, updated_at=updated)))))
                for lead in generator.population]
    mix = Mix(profiles, [], bench_roster(now), generator.named_accounts(), generator,
              random.Random(seed + 1))
    mix.touchpoints = mix.more_touchpoints(touchpoints, now)
    return mix


def probe_profiles(run: str, count: int, now: datetime) -> list[tuple[bytes, bytes]]:
    """Probe leads: fit decision makers (VP of a 300-person SaaS company); one demo request
    makes each SQL at once (direct path). Countries cycle through the four territory pools."""
    out = []
    for i in range(count):
        lead = f"P-{run}-{i}"
        _, language, country = PEOPLE[i % len(PEOPLE)]
        profile = {"lead_id": lead, "updated_at": _iso(now - timedelta(minutes=1)),
                   "title": "VP Sales", "seniority": "vp", "buying_role": "decision_maker",
                   "language": language, "country": country,
                   "company": {"name": "Probe Inc", "domain": "probe.example",
                               "employees": 300, "industry": "saas"}}
        out.append((lead.encode(), orjson.dumps(profile)))
    return out


def probe_touchpoint(lead_id: bytes, at: datetime, size: int = 300) -> bytes:
    lead = lead_id.decode()
    return _pad({"event_id": f"{lead}-demo", "lead_id": lead, "type": "demo_request",
                 "occurred_at": _iso(at), "channel": "web", "account_domain": "probe.example",
                 "properties": {"url": "/demo"}}, size)


def probe_routes(profiles: Sequence[tuple[bytes, bytes]], at: datetime,
                 named_accounts: Collection[str] = ()) -> list[tuple[bytes, bytes]]:
    """The routing records the leads stage writes for these probe leads and their demo
    requests, made by the same Qualifier (default rules) in process, so the routing stage can
    be fed and timed without the leads stage in front of it."""
    topics = Topics.with_prefix("")
    qualifier = Qualifier(load_rules(None), topics, __version__,
                          lambda domain: domain in named_accounts)
    records = [Record(topics.profiles, 0, i, key, value)
               for i, (key, value) in enumerate(profiles)]
    records += [Record(topics.touchpoints, 0, i, key, probe_touchpoint(key, at))
                for i, (key, _) in enumerate(profiles)]
    stored: dict[bytes, bytes] = {}
    batch = qualifier.process(records, at, stored.get)
    return [(out.key or b"", out.value) for out in batch.outputs if out.topic == topics.routing]


# --------------------------------------------------------------------------------------------
# Kafka helpers
# --------------------------------------------------------------------------------------------



async def produce(bootstrap: list[str], topic: str, records: Sequence[tuple[bytes, bytes]],
                  client: dict[str, Any], chunk: int = 10_000,
                  partition_of: Callable[[bytes], int] | None = None,
                  transactional_id: str | None = None) -> float:
    """Send every record (acks from the leader), as fast as the producer goes; seconds taken.
    `partition_of` stands in for another producer's partitioner (default: murmur2). With
    `transactional_id`, all of them in one transaction: a read_committed consumer sees none
    until it sees them all, so it is timed on its own rather than on this producer."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_batch_size=256 * 1024, transactional_id=transactional_id,
                                **client)
    await producer.start()
    started = time.monotonic()
    try:
        if transactional_id is not None:
            await producer.begin_transaction()
        for i in range(0, len(records), chunk):
            pending = [await producer.send(topic, value, key=key, partition=(
                           None if partition_of is None else partition_of(key)))
                       for key, value in records[i:i + chunk]]
            await asyncio.gather(*pending)
        if transactional_id is not None:
            await producer.commit_transaction()
    finally:
        await producer.stop()
    return time.monotonic() - started
