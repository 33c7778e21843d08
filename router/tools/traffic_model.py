"""Synthetic inbound traffic: a realistic mix of leads, roles, companies and touchpoint types.

Used by the demo, the bench and the chaos harness (router.harness) and by the history
synthesiser (router.tools.synth): it lives among the tools so that no tool imports the
harness. Deterministic for a given seed, so a demo run can be reproduced. Each lead has a
temperament that shapes what it does next:
  cold  - reads blog posts and opens emails, rarely more;
  warm  - comes back to pricing and product pages (standard path);
  hot   - asks for a demo or books a call (direct path).
A small share of events is deliberately broken so the dead-letter topic has something to show.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

COMPANIES: list[tuple[str, str, int, str]] = [
    # name, domain, employees, industry
    ("Acme", "acme.io", 420, "saas"),
    ("Globex", "globex.com", 1800, "software"),
    ("Initech", "initech.com", 260, "business_services"),
    ("Umbrella Finance", "umbrella.finance", 950, "financial_services"),
    ("Hooli", "hooli.com", 1200, "software"),
    ("Vandelay", "vandelay.io", 75, "saas"),
    ("Stark Retail", "stark-retail.com", 5200, "retail"),
    ("Tiny Shop", "tinyshop.example", 12, "retail"),
    ("Wayne Logistics", "wayne-logistics.com", 3400, "logistics"),
    ("Soylent Health", "soylent.health", 600, "healthcare"),
    ("BigCo", "bigco.com", 15000, "manufacturing"),
    ("Northwind", "northwind.example", 140, "business_services"),
]
NAMED_ACCOUNTS = [  # R-05 is out of office: Hooli's leads go to its backup R-04
    {"account_domain": "bigco.com", "owner_rep_id": "R-03", "account_name": "BigCo"},
    {"account_domain": "hooli.com", "owner_rep_id": "R-05", "account_name": "Hooli"},
    {"account_domain": "stark-retail.com", "owner_rep_id": "R-08", "account_name": "Stark"},
]
def _rep(rep_id: str, name: str, pools: list[str], languages: list[str], tz: str,
         **extra: Any) -> dict[str, Any]:
    return {"rep_id": rep_id, "name": name, "email": f"{rep_id.lower()}@vendor.example",
            "pools": pools, "languages": languages, "timezone": tz, **extra}


def roster(now: datetime) -> list[dict[str, Any]]:
    """Several pools and languages, one rep out of office (with a backup), one nearly full."""
    away = [{"start": _iso(now - timedelta(days=2)), "end": _iso(now + timedelta(days=5)),
             "backup_rep_id": "R-04"}]
    return [
        _rep("R-01", "Maya Chen", ["NA"], ["en"], "America/New_York"),
        _rep("R-02", "Tom Baker", ["NA"], ["en", "fr"], "America/Toronto", weight=2),
        _rep("R-03", "Jonas Weber", ["EMEA"], ["de", "en"], "Europe/Berlin"),
        _rep("R-04", "Lucia Ferri", ["EMEA"], ["it", "en", "es"], "Europe/Rome"),
        _rep("R-05", "Ana Ruiz", ["EMEA"], ["es", "en"], "Europe/Madrid", out_of_office=away),
        _rep("R-06", "Pierre Dubois", ["EMEA"], ["fr", "en"], "Europe/Paris",
             max_open_leads=3),
        _rep("R-07", "Joao Costa", ["LATAM"], ["pt", "es"], "America/Sao_Paulo"),
        _rep("R-08", "Hana Sato", ["APAC"], ["ja", "en"], "Asia/Tokyo"),
        _rep("R-09", "Ravi Iyer", ["APAC"], ["en", "hi"], "Asia/Kolkata"),
        _rep("R-10", "Sam Global", ["global"], ["en"], "UTC"),
    ]


PEOPLE = [
    ("Ana Ruiz", "es", "ES"), ("Jonas Weber", "de", "DE"), ("Maya Patel", "en", "US"),
    ("Luc Martin", "fr", "FR"), ("Sofia Rossi", "it", "IT"), ("Kenji Sato", "ja", "JP"),
    ("Olivia Brown", "en", "GB"), ("Lucas Silva", "pt", "BR"), ("Emma Jansen", "nl", "NL"),
    ("Noah Smith", "en", "CA"), ("Camila Lopez", "es", "MX"), ("Aarav Gupta", "en", "IN"),
]
ROLES: list[tuple[str, str, str, float]] = [
    # title, seniority, buying_role, weight
    ("Chief Revenue Officer", "c_level", "decision_maker", 0.05),
    ("VP Marketing", "vp", "decision_maker", 0.08),
    ("Director of Operations", "director", "influencer", 0.12),
    ("Head of Data", "director", "decision_maker", 0.08),
    ("Marketing Manager", "manager", "influencer", 0.2),
    ("Senior Analyst", "senior_ic", "end_user", 0.2),
    ("Data Engineer", "ic", "researcher", 0.17),
    ("Intern", "ic", "unknown", 0.1),
]
TOPICS = ["data quality", "pipeline monitoring", "lead scoring", "pricing", "integrations",
          "security review", "migration from spreadsheets", "ROI calculator"]
BEHAVIOUR: dict[str, list[tuple[str, float]]] = {
    "cold": [("page_view", 0.4), ("email_open", 0.3), ("content_download", 0.1),
             ("social_engagement", 0.1), ("ad_click", 0.1)],
    "warm": [("page_view", 0.2), ("pricing_page_view", 0.25), ("product_page_view", 0.15),
             ("webinar_attended", 0.1), ("email_click", 0.1), ("content_download", 0.1),
             ("competitor_comparison_view", 0.05), ("quiz_completed", 0.05)],
    "hot": [("page_view", 0.25), ("pricing_page_view", 0.25), ("demo_request", 0.2),
            ("calendar_booked", 0.1), ("chat_talk_to_sales", 0.1), ("contact_form", 0.1)],
}


def _pick(rng: random.Random, weighted: list[tuple[str, float]]) -> str:
    names = [name for name, _ in weighted]
    weights = [weight for _, weight in weighted]
    return names[rng.choices(range(len(names)), weights)[0]]


@dataclass
class SyntheticLead:
    lead_id: str
    temperament: str
    profile: dict[str, Any]
    touches: int = 0
    profile_sent: bool = False
    profile_after: int = 0  # send the profile after this many touchpoints


@dataclass
class TrafficGenerator:
    leads: int = 400
    seed: int = 7
    bad_event_share: float = 0.01
    rng: random.Random = field(init=False)
    population: list[SyntheticLead] = field(init=False)
    sequence: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.population = [self._make_lead(i) for i in range(self.leads)]

    def _make_lead(self, i: int) -> SyntheticLead:
        rng = self.rng
        company = rng.choice(COMPANIES)
        person, language, country = rng.choice(PEOPLE)
        title, seniority, role = _pick_role(rng)
        first = person.split()[0].lower()
        lead_id = f"L-{i + 1:05d}"
        profile = {
            "lead_id": lead_id,
            "email": f"{first}.{i}@{company[1]}",
            "name": person,
            "title": title,
            "seniority": seniority,
            "buying_role": role,
            "language": language,
            "country": country,
            "company": {"name": company[0], "domain": company[1], "employees": company[2],
                        "industry": company[3]},
        }
        temperament = _pick(rng, [("cold", 0.5), ("warm", 0.35), ("hot", 0.15)])
        return SyntheticLead(lead_id, temperament, profile,
                             profile_after=rng.choice([0, 0, 0, 1, 2]))

    def named_accounts(self) -> list[tuple[bytes, bytes]]:
        return [(a["account_domain"].encode(), orjson.dumps(a)) for a in NAMED_ACCOUNTS]

    def reps(self, now: datetime) -> list[tuple[bytes, bytes]]:
        return [(r["rep_id"].encode(), orjson.dumps(r)) for r in roster(now)]

    def rep_response(self, assignment: dict[str, Any], sla_seconds: float
                     ) -> list[tuple[float, dict[str, Any]]]:
        """How the rep reacts to a new lead: [(seconds from now, activity), ...].

        Most touch the lead inside the SLA budget, some too late, some never (so the SLA
        breaches and, for high-intent leads, the lead is reassigned). After the first touch
        most accept, some reject with a structured reason (the lead is recycled)."""
        rng = self.rng
        lead, rep = assignment["lead_id"], assignment["rep_id"]
        base = f"sa-{assignment['event_id']}"
        roll = rng.random()
        if roll < 0.7:
            touch_after = rng.uniform(0.1, 0.7) * sla_seconds
        elif roll < 0.85:
            touch_after = rng.uniform(1.1, 1.5) * sla_seconds
        else:
            return []  # never touched

        def activity(kind: str, after: float, **extra: str) -> tuple[float, dict[str, Any]]:
            # occurred_at is stamped when the activity is actually sent
            return after, {"event_id": f"{base}-{kind}", "lead_id": lead, "rep_id": rep,
                           "type": kind, **extra}

        out = [activity("first_touch", touch_after)]
        decide_after = touch_after + rng.uniform(2.0, 8.0)
        roll = rng.random()
        if roll < 0.6:
            out.append(activity("accepted", decide_after))
        elif roll < 0.85:
            reason = rng.choice(["bad_timing", "no_budget", "wrong_role", "could_not_reach",
                                 "competitor"])
            out.append(activity("rejected", decide_after, reason=reason))
        else:
            out.append(activity("released", decide_after))
        return out

    def next_events(self, now: datetime) -> list[tuple[str, bytes, bytes]]:
        """The next (kind, key, value) events; kind is 'touchpoint' or 'profile'."""
        rng = self.rng
        self.sequence += 1
        lead = rng.choice(self.population)
        key = lead.lead_id.encode()
        out: list[tuple[str, bytes, bytes]] = []
        if rng.random() < self.bad_event_share:
            return [("touchpoint", key, self._bad_event(lead, now))]
        if not lead.profile_sent and lead.touches >= lead.profile_after:
            profile = dict(lead.profile, updated_at=_iso(now - timedelta(seconds=1)))
            out.append(("profile", key, orjson.dumps(profile)))
            lead.profile_sent = True
        kind = _pick(rng, BEHAVIOUR[lead.temperament])
        props: dict[str, Any] = {"topic": rng.choice(TOPICS)}
        if kind == "quiz_completed":
            props["score"] = rng.randint(40, 100)
        if kind == "pricing_page_view":
            props = {"url": "/pricing", "topic": "pricing"}
        company = lead.profile["company"]
        event = {
            "event_id": f"tp-{self.seed}-{self.sequence}",
            "lead_id": lead.lead_id,
            "type": kind,
            "occurred_at": _iso(now),
            "channel": "web",
            "account_domain": company["domain"],
            "properties": props,
        }
        lead.touches += 1
        out.append(("touchpoint", key, orjson.dumps(event)))
        return out

    def _bad_event(self, lead: SyntheticLead, now: datetime) -> bytes:
        broken = self.rng.choice(["json", "type", "future", "missing"])
        if broken == "json":
            return b'{"event_id": "tp-broken", "lead_id": '
        base = {"event_id": f"tp-bad-{self.sequence}", "lead_id": lead.lead_id,
                "type": "page_view", "occurred_at": _iso(now)}
        if broken == "type":
            base["type"] = "carrier_pigeon"
        elif broken == "future":
            base["occurred_at"] = _iso(now + timedelta(days=2))
        else:
            del base["occurred_at"]
        return orjson.dumps(base)


def _pick_role(rng: random.Random) -> tuple[str, str, str]:
    title, seniority, role, _ = rng.choices(ROLES, [r[3] for r in ROLES])[0]
    return title, seniority, role


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
