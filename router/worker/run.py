"""`leadrouter worker`: check the rules, make sure the topics exist, then run faust."""

from __future__ import annotations

import asyncio
import logging
import logging.config

import faust

from router.adapters.tansu_quirks import install_faust_recovery_fix
from router.adapters.topics import Topics, ensure_topics
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
    created = asyncio.run(ensure_topics(settings, topics))
    if settings.broker_quirks == "tansu":
        install_faust_recovery_fix()
    log.info(
        "worker starting",
        extra={
            "broker": settings.broker,
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
