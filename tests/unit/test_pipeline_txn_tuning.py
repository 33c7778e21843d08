"""LEADROUTER_TXN_TUNING (router/worker/pipeline/txn_tuning.py): the switches parse, and a
bad one names itself."""

from __future__ import annotations

import pytest

from router.worker.pipeline.txn_tuning import TxnTuning


def test_the_defaults_are_the_measured_winners() -> None:
    tuning = TxnTuning.from_env({})
    assert tuning.worker_transactions and tuning.worker_producers == 2
    assert tuning.concurrent_txn_backoff_ms == 2.0 and tuning.acks_before_offsets


def test_switches_parse_by_their_type() -> None:
    tuning = TxnTuning.from_env({"LEADROUTER_TXN_TUNING":
                                 "worker_producers=1, overlap_commits=0,retry_backoff_ms=10"})
    assert (tuning.worker_producers, tuning.overlap_commits, tuning.retry_backoff_ms) == (
        1, False, 10)


@pytest.mark.parametrize(("text", "message"), [
    ("producers=2", "unknown switch 'producers'"),
    ("worker_producers=two", "worker_producers='two' is not a valid int"),
    ("worker_producers=0", "worker_producers=0 must be 1 or more"),
    ("overlap_commits=yes", "overlap_commits='yes' is not a valid bool"),
])
def test_a_bad_switch_names_itself(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TxnTuning.from_env({"LEADROUTER_TXN_TUNING": text})
