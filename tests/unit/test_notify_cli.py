"""router.notify.cli: the `leadrouter notify` flags as mounted by router/cli.py, and the
NotifyConfig that config_from_args makes from them and the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from router.cli import build_parser
from router.notify.cli import config_from_args
from router.notify.consumer import NotifyConfig


def test_config_from_args_and_cli(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["notify", "--topic-prefix", "p.", "--max-retries", "3"])
    assert args.func.__name__ == "_cmd_notify"
    with pytest.raises(ValueError, match="webhook URL is needed"):
        config_from_args(args, environ={})
    config = config_from_args(args, environ={"LEADROUTER_NOTIFY_WEBHOOK_URL": "http://h/x",
                                             "LEADROUTER_BROKER": "kafka://b:9093"})
    assert config.webhook_url == "http://h/x" and config.settings.broker == "kafka://b:9093"
    assert config.group_id == "p.leadrouter-notify" and config.max_retries == 3
    assert config.offset_reset == "latest" and config.handover and config.timeout == 10.0
    secret = tmp_path / "url"
    secret.write_text("https://hooks.example/T/B/s\n")
    args = parser.parse_args(["notify", "--webhook-url-file", str(secret), "--group", "g",
                              "--no-handover", "--offset-reset", "earliest"])
    config = config_from_args(args, environ={})
    assert config.webhook_url == "https://hooks.example/T/B/s" and config.group_id == "g"
    assert not config.handover and config.offset_reset == "earliest"
    with pytest.raises(ValueError):
        NotifyConfig(webhook_url="http://h/x", max_retries=-1)
    with pytest.raises(ValueError):
        NotifyConfig(webhook_url="http://h/x", backoff_base=5, backoff_cap=1)



def test_parser_accepts_every_documented_flag() -> None:
    args = build_parser().parse_args([
        "notify", "--webhook-url", "http://127.0.0.1:1/x", "--broker", "kafka://h:1",
        "--topic-prefix", "p.", "--group", "g", "--max-retries", "5", "--timeout", "2.5",
        "--backoff-base", "0.1", "--backoff-cap", "3", "--offset-reset", "earliest",
        "--no-handover", "--max-messages", "10", "--idle-exit-seconds", "4"])
    assert isinstance(args, argparse.Namespace)
    config = config_from_args(args, environ={})
    assert (config.settings.broker, config.settings.topic_prefix) == ("kafka://h:1", "p.")
    assert (config.max_retries, config.timeout, config.backoff_base, config.backoff_cap) == (
        5, 2.5, 0.1, 3.0)
    assert (config.max_messages, config.idle_exit_seconds) == (10, 4.0)

