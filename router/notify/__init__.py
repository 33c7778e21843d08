"""`leadrouter notify`: a reference notifier that posts assignments and SLA alerts to a
Slack-compatible incoming webhook.

It reads `<prefix>leads.assignments` and `<prefix>leads.sla` (and, for the handover summary,
the `lead.sql` events of `<prefix>leads.transitions`) in its own consumer group and posts one
`{"text": ..., "blocks": [...]}` message per event. Two halves:

- pure functions (`format_message`, `handover_summary`, `classify_status`, `backoff_delay`,
  `parse_retry_after`, `retry_delay`), unit-tested without a broker or a network;
- the I/O loop (`Notifier`), which gives these guarantees:
  * an offset is committed only once the message it covers is done with: posted (2xx),
    refused for good (4xx other than 408/429), given up after `--max-retries`, or skipped
    (duplicate, `sla.met`, unknown type, undecodable). A crash re-posts at most the one
    message whose post was in flight (at-least-once);
  * connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
    jitter (capped, default 30 s), waiting at least the `Retry-After` the server asked for;
    `--max-retries 0` (the default) retries forever, so a webhook outage blocks the stream
    instead of dropping notifications;
  * repeated `event_id`s are dropped (an in-memory LRU of the last 100k ids);
  * lead emails and names never leave the process in full (masked with `router.logs`), and
    the webhook URL, which is a secret, is never logged beyond its host.

The modules, along those seams:

- `format`: the message for one event and the masked handover summary (pure);
- `delivery`: the retry policy (pure) and `WebhookPoster`, which posts one message;
- `consumer`: `Notifier`, the Kafka loop (dispatch, dedupe, offsets), and `run_notifier`;
- `cli`: the `leadrouter notify` flags, `config_from_args` and `main`.

This package re-exports their public names, so `from router.notify import Notifier` keeps
working; start from `format` and `delivery` to adapt it to SMS, e-mail or CRM sync.
"""

from router.notify.cli import WEBHOOK_ENV, add_arguments, config_from_args, main
from router.notify.consumer import (
    MAX_POLL_INTERVAL_MS,
    BrokerUnavailable,
    LruCache,
    Notifier,
    NotifyConfig,
    RecentIds,
    decode_event,
    run_notifier,
)
from router.notify.delivery import (
    RETRY_AFTER_CAP_SECONDS,
    Attempt,
    Delivery,
    Outcome,
    Result,
    WebhookPoster,
    backoff_delay,
    classify_status,
    parse_retry_after,
    redact_url,
    retry_delay,
    validate_webhook_url,
)
from router.notify.format import (
    ASSIGNMENT_TYPES,
    MAX_TALKING_POINTS,
    MAX_TRACE_ENTRIES,
    POSTED_TYPES,
    SKIPPED_TYPES,
    SLA_ALERT_TYPES,
    format_message,
    handover_summary,
)

__all__ = [
    "ASSIGNMENT_TYPES",
    "MAX_POLL_INTERVAL_MS",
    "MAX_TALKING_POINTS",
    "MAX_TRACE_ENTRIES",
    "POSTED_TYPES",
    "RETRY_AFTER_CAP_SECONDS",
    "SKIPPED_TYPES",
    "SLA_ALERT_TYPES",
    "WEBHOOK_ENV",
    "Attempt",
    "BrokerUnavailable",
    "Delivery",
    "LruCache",
    "Notifier",
    "NotifyConfig",
    "Outcome",
    "RecentIds",
    "Result",
    "WebhookPoster",
    "add_arguments",
    "backoff_delay",
    "classify_status",
    "config_from_args",
    "decode_event",
    "format_message",
    "handover_summary",
    "main",
    "parse_retry_after",
    "redact_url",
    "retry_delay",
    "run_notifier",
    "validate_webhook_url",
]
