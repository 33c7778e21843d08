"""The partition processor: the worker's consumer for every input path, on plain aiokafka.

It replaces faust's consumer, whose fetch/ack/commit bookkeeping lost records after crashes and
rebalances (issue 12). The invariant it keeps by construction: the only offsets ever committed
are those of batches whose outputs and state were written first (or in the same transaction),
and a task that is not fully initialised processes nothing, so a record fetched once is either
processed or fetched again from the committed position.

  core.py       pure bookkeeping: tasks (stage, partition), phases, epochs, resume positions,
                the co-partitioned assignment plan (unit-tested without Kafka)
  store.py      a task's local state (memory dict or RocksDB) and its changelog meta keys
  assignor.py   aiokafka assignor: co-partitioned, sticky, owners' web URLs for the views
  processor.py  the runtime: consumer loop, rebalance listener, wiring the pieces below;
                `_direct` hands a stage's outputs to a one-partition stage owned here, in
                the same transaction (stage.DirectInput, txn_tuning: direct_delivery)
  restore.py    a task to ready: fence the previous owner, restore the changelog, resume
  eos_commit.py exactly-once commits: one transaction per task and batch, overlapped
  worker_txn.py exactly-once, one transaction per worker for all its tasks (txn_tuning:
                worker_transactions), fenced by kip447.py's generation-checked offsets
  pending.py    a task's writes and offsets decided and not yet committed: its next batch
                reads them (one transaction per worker), a failed transaction drops them
  kip447.py     TxnOffsetCommit v3 and OffsetFetch v7 require_stable, patched into aiokafka
  alo_commit.py at-least-once commits: outputs acked, state written, offsets committed
  commit.py     what both commit protocols share (changelog sends, TaskControl)
  stage.py      StageSpec (a stage's declaration), its Handler and StageResult
  loggers.py    the processor's logger and router.trace
"""
