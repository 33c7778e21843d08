"""How the exactly-once path talks to the broker: the measured defaults, and the switches
`leadrouter bench-latency --compare` flips to show what each one is worth (README "Measured",
the exactly-once hop). Users never need to set these; the defaults are the measured winners.

The switches (LEADROUTER_TXN_TUNING="name=value,...", read once per worker process):
- concurrent_txn_backoff_ms: aiokafka sleeps a hard-coded 20 ms (`BACKOFF_OVERRIDE` in
  aiokafka/producer/sender.py) when AddPartitionsToTxn answers CONCURRENT_TRANSACTIONS. The
  broker answers EndTxn before it has written the commit markers, so the first
  AddPartitionsToTxn of the next transaction nearly always gets that answer: back to back,
  every transaction pays the sleep although the markers take ~1-3 ms on a local broker.
  Kafka's Java client has the same 20 ms constant (KAFKA-5477); Kafka Streams hides it by
  committing every 100 ms, while this worker commits each batch as soon as it is decided.
- acks_before_offsets: wait for the batch's produce acks before AddOffsetsToTxn. With
  partition verification (KIP-890, on by default since Kafka 3.6) the partition leader asks
  the coordinator whether the partition is in the transaction; if the coordinator is busy
  appending AddOffsetsToTxn's state change at that moment it answers CONCURRENT_TRANSACTIONS,
  which the leader reports to older clients (aiokafka) as NOT_ENOUGH_REPLICAS, and aiokafka
  retries the produce after its full retry_backoff_ms. That is the "NotEnoughReplicasError
  ... retrying" in a worker's log on a healthy broker. Ordering the two requests removes the
  race for one produce round trip (~1 ms locally).
- retry_backoff_ms: the transactional producers' retry backoff (aiokafka's default is 100).
- overlap_commits: fetch and decide the next batch while the commits run (eos_commit.py;
  processor.py, step 4). aiokafka sends no new fetch to a broker while fetched records wait
  unread, so a loop that waits for its commits delays every record that arrives meanwhile by
  a batch.
- max_concurrent_commits: at most this many tasks' transactions at once (0: no limit). Nine
  tasks committing side by side on one event loop and one broker make each transaction about
  4 x slower than one alone (`make bench-txn`); a task waiting for a slot keeps collecting
  records, so fewer, larger transactions run.
- worker_transactions (the default; 0 goes back to a producer per task): one transactional
  producer per worker instead of one per task; every
  task decided while a transaction commits joins the next one (worker_txn.py), fenced by the
  consumer group's generation (KIP-447, kip447.py) instead of a transactional id per task.
- worker_producers (2; 1 for a single producer): with worker_transactions, the transactional
  producers the worker's transactions take turns on. The broker answers EndTxn before it has
  written the commit markers, and the same transactional id's next AddPartitionsToTxn gets
  CONCURRENT_TRANSACTIONS until they are written: 2-4 tries and 10-20 ms of each transaction
  under light load (README "Measured", "Taking turns on two producers"). Another producer's
  transaction is not held by them; it still begins only once the one before has committed.
- direct_delivery (the default; 0 sends every record through its topic): with
  worker_transactions, a stage's outputs to a one-partition stage this worker owns (the
  qualifier's route requests to the routing stage) are applied by that stage in the same
  transaction that publishes them, and the published copy is marked so that reading it back
  applies nothing (processor.py `_direct`). `lead.assigned` is then one transaction after the
  touchpoint instead of two: the second hop waited for a commit, a read_committed fetch and
  a second commit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import aiokafka.producer.sender as aiokafka_sender

ENV = "LEADROUTER_TXN_TUNING"


@dataclass(frozen=True, slots=True)
class TxnTuning:
    concurrent_txn_backoff_ms: float = 2.0
    acks_before_offsets: bool = True
    retry_backoff_ms: int = 100
    overlap_commits: bool = True
    max_concurrent_commits: int = 0
    worker_transactions: bool = True
    worker_producers: int = 2
    direct_delivery: bool = True

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TxnTuning:
        text = (os.environ if environ is None else environ).get(ENV, "").strip()
        if not text:
            return cls()
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | bool | int] = {}
        for item in text.split(","):
            name, _, raw = item.partition("=")
            name = name.strip()
            if name not in known:
                raise ValueError(f"{ENV}: unknown switch {name!r} (known: {', '.join(known)})")
            kind = known[name]
            try:
                if kind == "bool":
                    if raw.strip() not in ("0", "1", "true", "false"):
                        raise ValueError(raw)
                    values[name] = raw.strip() in ("1", "true")
                elif kind == "int":
                    values[name] = int(raw)
                else:
                    values[name] = float(raw)
            except ValueError:
                raise ValueError(f"{ENV}: {name}={raw!r} is not a valid {kind}") from None
        tuning = cls(**values)  # type: ignore[arg-type]
        if tuning.worker_producers < 1:
            raise ValueError(f"{ENV}: worker_producers={tuning.worker_producers} must be 1 or"
                             " more")
        return tuning

    def apply(self) -> None:
        """aiokafka reads the constant at each retry, so setting the module's global is the
        whole patch (process-wide: every producer in a worker is the router's)."""
        aiokafka_sender.BACKOFF_OVERRIDE = self.concurrent_txn_backoff_ms / 1000.0
