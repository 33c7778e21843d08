"""`leadrouter worker`: check the rules, make sure the topics exist, recognise the broker,
then run the partition processor and the web server until SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import logging.config

from router.adapters.broker_kind import WrongBroker, quirks_for
from router.adapters.topics import Topics, prepare_broker
from router.domain.rules import load_rules
from router.gc_tuning import tune_for_throughput
from router.logs import logging_config
from router.settings import Settings
from router.worker.app import RouterApp

log = logging.getLogger("router.worker")


def processing_guarantee(settings: Settings, quirks: str) -> str:
    """exactly_once wherever the broker has transactions (Apache Kafka), at_least_once on
    Tansu; asking for exactly_once on Tansu is refused rather than silently weakened."""
    if quirks == "tansu":
        if settings.processing_guarantee == "exactly_once":
            raise WrongBroker(
                f"LEADROUTER_PROCESSING_GUARANTEE=exactly_once, but {settings.broker} is Tansu,"
                " which has no transactions; unset it (auto gives at_least_once there) or use"
                " Apache Kafka")
        return "at_least_once"
    if settings.processing_guarantee == "auto":
        return "exactly_once"
    return settings.processing_guarantee


def run_worker(settings: Settings) -> None:
    config = logging_config(settings.log_format, settings.log_level)
    logging.config.dictConfig(config)
    rules = load_rules(settings.rules)  # RulesError (line + field) surfaces before any I/O
    topics = Topics.with_prefix(settings.topic_prefix)
    identity, created = asyncio.run(prepare_broker(settings, topics))
    quirks = quirks_for(settings, identity)  # WrongBroker when the settings contradict it
    settings = dataclasses.replace(settings, broker_quirks=quirks or "none",
                                   processing_guarantee=processing_guarantee(settings, quirks))
    log.info(
        "worker starting",
        extra={
            "broker": settings.broker,
            "broker_kind": identity.kind,
            "cluster_id": identity.cluster_id,
            "brokers": identity.broker_count,
            "processing_guarantee": settings.processing_guarantee,
            "store": settings.store,
            "rules_version": rules.version,
            "topics_created": created,
            "web": f"http://{settings.web_host}:{settings.web_port}",
        },
    )
    tune_for_throughput()
    asyncio.run(RouterApp(settings, rules).run())
    log.info("worker stopped")
