"""Settings: environment and flags agree, bad values are named, secrets never come from argv."""

from __future__ import annotations

import argparse
import socket
import ssl
from pathlib import Path

import faust
import pytest

from router.adapters.broker_kind import WrongBroker
from router.cli import build_parser
from router.domain.rules import load_rules
from router.harness.bench.faust_floor_app import broker_credentials
from router.settings import Settings, add_arguments, bootstrap_servers, from_args, from_env
from router.worker.app import RouterApp
from router.worker.run import processing_guarantee


def parse(argv: list[str], env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), env)


def test_flags_win_over_environment_and_types_are_converted() -> None:
    s = parse(["--partitions", "12", "--topic-prefix", "a."],
              {"LEADROUTER_PARTITIONS": "3", "LEADROUTER_WEB_PORT": "7000"})
    assert (s.partitions, s.topic_prefix, s.web_port) == (12, "a.", 7000)
    assert s.app_id == "a.leadrouter"
    assert from_env({"LEADROUTER_PRODUCER_BATCH_BYTES": "65536"}).producer_batch_bytes == 65536


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LEADROUTER_PARTITIONS": "eight"}, "LEADROUTER_PARTITIONS='eight': expected a int"),
        ({"LEADROUTER_LOG_FORMAT": "xml"}, "log_format must be 'json' or 'text'"),
        ({"LEADROUTER_SECURITY_PROTOCOL": "TLS"}, "security_protocol must be one of"),
        ({"LEADROUTER_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL needs LEADROUTER_SASL_USERNAME"),
        ({"LEADROUTER_SASL_MECHANISM": "GSSAPI"}, "sasl_mechanism must be one of"),
        ({"LEADROUTER_PRODUCER_BATCH_BYTES": "100"}, "producer_batch_bytes must be between"),
        ({"LEADROUTER_PRODUCER_BATCH_BYTES": str(64 << 20)},
         "producer_batch_bytes must be between"),
    ],
)
def test_bad_settings_name_what_is_wrong(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        from_env(env)


def test_secrets_have_no_command_line_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--sasl-password", "hunter2"])
    assert "unrecognized arguments: --sasl-password" in capsys.readouterr().err
    args = parser.parse_args(["worker", "--sasl-password-file", "/run/secrets/kafka"])
    assert args.sasl_password_file == "/run/secrets/kafka"


def test_sasl_scram_over_tls_reaches_every_client(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    s = from_env({"LEADROUTER_SECURITY_PROTOCOL": "SASL_SSL",
                  "LEADROUTER_SASL_MECHANISM": "SCRAM-SHA-512",
                  "LEADROUTER_SASL_USERNAME": "router",
                  "LEADROUTER_SASL_PASSWORD_FILE": str(secret)})
    kwargs = s.kafka_client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"],
            kwargs["sasl_plain_password"]) == ("SCRAM-SHA-512", "router", "s3cret")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password) == ("router", "s3cret")
    router = RouterApp(s, load_rules())
    assert router.accounts.client_kwargs["sasl_plain_username"] == "router"
    assert router.reps.client_kwargs["security_protocol"] == "SASL_SSL"
    assert router.processor.client["sasl_plain_username"] == "router"  # consumer, producers


def test_plaintext_by_default() -> None:
    s = Settings()
    assert s.kafka_client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(s) is None
    assert s.web_host == "127.0.0.1"  # the HTTP server is loopback-only unless told otherwise


def test_bootstrap_servers_accepts_faust_and_plain_forms() -> None:
    assert bootstrap_servers("kafka://h1:9092;kafka://h2:9093") == ["h1:9092", "h2:9093"]
    assert bootstrap_servers("h1,h2:1") == ["h1:9092", "h2:1"]
    with pytest.raises(ValueError, match="no broker address"):
        bootstrap_servers(" ; ")


def test_advertised_url_for_the_lead_views() -> None:
    assert Settings().advertised_url() == "http://127.0.0.1:6066"
    assert Settings(web_host="10.0.0.5", web_port=7000).advertised_url() == \
        "http://10.0.0.5:7000"
    # binding every interface says nothing about how to be reached: the host name stands in
    bound_all = Settings(web_host="0.0.0.0").advertised_url()
    assert bound_all == f"http://{socket.getfqdn()}:6066"
    assert "0.0.0.0" not in bound_all
    explicit = Settings(web_host="0.0.0.0",
                        web_advertised_url="http://leadrouter-0.leadrouter-headless:6066/")
    assert explicit.advertised_url() == "http://leadrouter-0.leadrouter-headless:6066"


@pytest.mark.parametrize(("asked", "quirks", "resolved"), [
    ("auto", "", "exactly_once"),  # Apache Kafka has transactions
    ("at_least_once", "", "at_least_once"),
    ("exactly_once", "", "exactly_once"),
    ("auto", "tansu", "at_least_once"),  # Tansu has none
    ("at_least_once", "tansu", "at_least_once"),
])
def test_processing_guarantee_follows_the_broker(asked: str, quirks: str, resolved: str) -> None:
    assert processing_guarantee(Settings(processing_guarantee=asked), quirks) == resolved


def test_exactly_once_on_tansu_is_refused_with_what_to_do() -> None:
    with pytest.raises(WrongBroker, match="no transactions; unset it"):
        processing_guarantee(Settings(processing_guarantee="exactly_once"), "tansu")
    with pytest.raises(ValueError, match="processing_guarantee must be one of"):
        Settings(processing_guarantee="exactly-once")


def test_fetch_wait_is_chosen_for_the_broker_unless_set() -> None:
    from router.settings import KAFKA_FETCH_WAIT_MS, TANSU_FETCH_WAIT_MS

    assert Settings(broker_quirks="none").fetch_wait_ms() == KAFKA_FETCH_WAIT_MS == 500
    assert Settings(broker_quirks="tansu").fetch_wait_ms() == TANSU_FETCH_WAIT_MS == 100
    assert Settings(broker_quirks="tansu", fetch_max_wait_ms=50).fetch_wait_ms() == 50
    assert Settings(fetch_max_wait_ms=250).fetch_wait_ms() == 250
