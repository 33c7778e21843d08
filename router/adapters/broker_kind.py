"""Which broker the worker is talking to, and so which workarounds it needs.

A worker pointed at Tansu without its workarounds starts fine and loses state on its next
restart (table recovery stops early, see tansu_quirks.py), so the worker asks the cluster who
it is before anything else. Tansu answers DescribeCluster with the cluster id
`tansu_cluster`; Apache Kafka with the random id its storage was formatted with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from router.settings import Settings

log = logging.getLogger(__name__)

TANSU_CLUSTER_ID_PREFIX = "tansu"


class WrongBroker(RuntimeError):
    """The configured broker_quirks contradict the broker; the message says what to set."""


@dataclass(frozen=True)
class BrokerIdentity:
    cluster_id: str
    broker_count: int

    @property
    def kind(self) -> str:
        return "tansu" if self.cluster_id.lower().startswith(TANSU_CLUSTER_ID_PREFIX) else "kafka"


def quirks_for(settings: Settings, identity: BrokerIdentity) -> str:
    """The quirks to switch on ('tansu' or ''), or WrongBroker when the settings insist on
    something else than what answered."""
    if settings.broker_quirks == "auto":
        if identity.kind == "tansu":
            log.warning(
                "the broker is Tansu (the pip-only fallback): its workarounds are on, and it"
                " keeps everything in memory, so a broker restart loses all state and offsets",
                extra={"cluster_id": identity.cluster_id})
            return "tansu"
        return ""
    if settings.broker_quirks == "tansu" and identity.kind != "tansu":
        raise WrongBroker(
            f"LEADROUTER_BROKER_QUIRKS=tansu, but {settings.broker} is not Tansu (cluster id"
            f" {identity.cluster_id!r}); unset it (the default, auto, recognises the broker)")
    if settings.broker_quirks == "none" and identity.kind == "tansu":
        raise WrongBroker(
            f"LEADROUTER_BROKER_QUIRKS=none, but {settings.broker} is Tansu, which needs"
            " workarounds to keep state across worker restarts; use Apache Kafka, or unset it"
            " (auto) to run on Tansu with its workarounds")
    return "tansu" if identity.kind == "tansu" else ""


async def identify(admin: object) -> BrokerIdentity:
    described = await admin.describe_cluster()  # type: ignore[attr-defined]
    return BrokerIdentity(cluster_id=str(described.get("cluster_id") or ""),
                          broker_count=len(described.get("brokers") or []))
