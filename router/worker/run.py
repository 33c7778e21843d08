"""`leadrouter worker`: check the rules, make sure the topics exist, then run faust."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import logging.config

import faust

from router.adapters.broker_kind import quirks_for
from router.adapters.tansu_quirks import install_faust_recovery_fix
from router.adapters.topics import Topics, prepare_broker
from router.domain.rules import load_rules
from router.logs import logging_config
from router.settings import Settings
from router.worker.app import RouterApp

log = logging.getLogger("router.worker")


def run_worker(settings: Settings) -> None:
    config = logging_config(settings.log_format, settings.log_level)
    logging.config.dictConfig(config)
    rules = load_rules(settings.rules)  # RulesError (line + field) surfaces before any I/O
    topics = Topics.with_prefix(settings.topic_prefix)
    identity, created = asyncio.run(prepare_broker(settings, topics))
    quirks = quirks_for(settings, identity)  # WrongBroker when the settings contradict it
    settings = dataclasses.replace(settings, broker_quirks=quirks or "none")
    if quirks == "tansu":
        install_faust_recovery_fix()
    log.info(
        "worker starting",
        extra={
            "broker": settings.broker,
            "broker_kind": identity.kind,
            "cluster_id": identity.cluster_id,
            "brokers": identity.broker_count,
            "rules_version": rules.version,
            "topics_created": created,
            "web": f"http://{settings.web_host}:{settings.web_port}",
        },
    )
    router = RouterApp(settings, rules)
    worker = faust.Worker(
        router.app,
        loglevel=settings.log_level.upper(),
        logging_config=config,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
