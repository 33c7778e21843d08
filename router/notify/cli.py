"""`leadrouter notify` on the command line: its flags (`add_arguments`, mounted by
`router/cli.py`), the `NotifyConfig` they and the environment make (the webhook URL from a flag,
a file or `LEADROUTER_NOTIFY_WEBHOOK_URL`), and `main`, which maps a bad configuration or an
unreachable broker to exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from router.logs import logging_config
from router.notify.consumer import BrokerUnavailable, NotifyConfig, run_notifier
from router.settings import from_env

WEBHOOK_ENV = "LEADROUTER_NOTIFY_WEBHOOK_URL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--webhook-url", default=None,
                   help=f"Slack-compatible incoming-webhook URL [env {WEBHOOK_ENV}; prefer the"
                   " env or --webhook-url-file: the URL is a secret and argv is visible in ps]")
    p.add_argument("--webhook-url-file", default=None, help="file holding the webhook URL")
    p.add_argument("--broker", default=None,
                   help="Kafka bootstrap URL [env LEADROUTER_BROKER; default"
                   " kafka://127.0.0.1:9092]; TLS/SASL from LEADROUTER_SECURITY_PROTOCOL,"
                   " LEADROUTER_SASL_* and LEADROUTER_SSL_* as for the worker")
    p.add_argument("--topic-prefix", default=None, help="[env LEADROUTER_TOPIC_PREFIX]")
    p.add_argument("--group", default=None,
                   help="consumer group (default <prefix>leadrouter-notify)")
    p.add_argument("--max-retries", type=int, default=0,
                   help="retries per message before giving up on it (logged, skipped);"
                   " 0 = retry forever, blocking the stream while the webhook is down"
                   " (default 0)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds per HTTP attempt (default 10)")
    p.add_argument("--backoff-base", type=float, default=0.5,
                   help="first retry delay in seconds, doubled per retry (default 0.5)")
    p.add_argument("--backoff-cap", type=float, default=30.0,
                   help="longest retry delay in seconds (default 30)")
    p.add_argument("--offset-reset", choices=("latest", "earliest"), default="latest",
                   help="where a new group starts: latest (default; no flood of history) or"
                   " earliest; a group with committed offsets resumes from them")
    p.add_argument("--no-handover", dest="handover", action="store_false",
                   help="do not read leads.transitions for the lead.sql handover summary")
    p.add_argument("--max-messages", type=int, default=None,
                   help="exit after this many records (tests)")
    p.add_argument("--idle-exit-seconds", type=float, default=None,
                   help="exit after this long without records (tests)")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None
                     ) -> NotifyConfig:
    env = dict(os.environ) if environ is None else environ
    settings = from_env(env)
    overrides: dict[str, Any] = {}
    if getattr(args, "broker", None):
        overrides["broker"] = args.broker
    if getattr(args, "topic_prefix", None) is not None:
        overrides["topic_prefix"] = args.topic_prefix
    settings = replace(settings, **overrides)
    url = args.webhook_url
    if not url and args.webhook_url_file:
        url = Path(args.webhook_url_file).read_text(encoding="utf-8").strip()
    if not url:
        url = env.get(WEBHOOK_ENV, "")
    if not url:
        raise ValueError(f"a webhook URL is needed: --webhook-url, --webhook-url-file or"
                         f" {WEBHOOK_ENV}")
    return NotifyConfig(
        webhook_url=url, settings=settings, group=args.group, max_retries=args.max_retries,
        timeout=args.timeout, backoff_base=args.backoff_base, backoff_cap=args.backoff_cap,
        offset_reset=args.offset_reset, handover=args.handover,
        max_messages=args.max_messages, idle_exit_seconds=args.idle_exit_seconds)


def main(args: argparse.Namespace) -> int:
    """`leadrouter notify`: exit 0 on a clean stop, 2 on bad configuration or no broker."""
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"leadrouter notify: {exc}", file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_config(config.settings.log_format,
                                             config.settings.log_level))
    try:
        asyncio.run(run_notifier(config))
    except BrokerUnavailable as exc:
        print(f"leadrouter notify: {exc}", file=sys.stderr)
        return 2
    return 0
