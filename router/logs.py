"""Structured logging: one JSON object per line in production, readable lines in the demo.

Lead emails and names never reach a log line in full: use `mask_email` / `mask_name` for
anything that could identify a person.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask_email(email: str | None) -> str | None:
    """`ana.ruiz@acme.io` -> `a***@acme.io`: enough to correlate, not enough to contact."""
    if not email:
        return email
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else f"{local[:1]}***"


def mask_name(name: str | None) -> str | None:
    if not name:
        return name
    return " ".join(part[:1] + "." for part in name.split())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{moment} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """A dictConfig for our loggers and the libraries' (aiokafka; faust and mode, which only the
    bench's floor app imports, stay quiet unless debugging)."""
    formatter = "router.logs.JsonFormatter" if fmt == "json" else "router.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "stream": sys.stderr,
                       "formatter": "default"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING" if level.lower() != "debug" else "DEBUG"},
            "mode": {"level": "WARNING" if level.lower() != "debug" else "DEBUG"},
            # per-batch offsets, rebalances and commits, for chaos forensics only
            "router.trace": {"level": "DEBUG" if os.environ.get("LEADROUTER_TRACE") == "1"
                             else "INFO"},
        },
    }
