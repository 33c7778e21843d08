"""`leadrouter` command line: broker, worker, demo, rules check, schemas export, bench."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from router import __version__


def _cmd_broker(args: argparse.Namespace) -> int:
    from router.harness.brokers import BrokerError, KafkaBroker, describe, local_broker

    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if starting:
            raise KeyboardInterrupt  # interrupt the start; `finally` below stops the nodes

    starting = True
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        broker = local_broker(args.kind, port=args.port, nodes=args.nodes,
                              data_dir=Path(args.data_dir) if args.data_dir else None,
                              host=args.host)
        if isinstance(broker, KafkaBroker):
            broker.plan()  # ports and folders first, so the line below can name them
        print(f"starting the {describe(broker)} ...", flush=True)
        broker.start()
    except BrokerError as exc:
        print(f"leadrouter broker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leadrouter broker: interrupted while starting; stopped", file=sys.stderr)
        return 130
    starting = False
    print(f"{describe(broker)} listening on {broker.url}", flush=True)
    print(f"bootstrap: {broker.bootstrap}", flush=True)
    print("set LEADROUTER_BROKER=" + broker.url + " (workers recognise the broker and switch"
          " its workarounds on by themselves)", flush=True)
    try:
        while not stopping:
            if not broker.alive():
                print("leadrouter broker: a broker process exited", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        broker.stop()
        print("broker stopped" + ("" if args.data_dir else "; its temporary data removed"),
              flush=True)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from router.adapters.broker_kind import WrongBroker
    from router.adapters.topics import BrokerUnreachable
    from router.domain.rules import RulesError
    from router.settings import from_args
    from router.worker.run import run_worker

    try:
        settings = from_args(args)
        run_worker(settings)
    except (RulesError, BrokerUnreachable, WrongBroker, ValueError) as exc:
        print(f"leadrouter worker: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from router.domain.rules import RulesError, load_rules

    try:
        rules = load_rules(args.file)
    except RulesError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{args.file}: ok (rules_version {rules.version})")
    return 0


def _cmd_schemas_export(args: argparse.Namespace) -> int:
    from router.schemas import write_schemas

    written = write_schemas(Path(args.out))
    for path in written:
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from router.harness.demo import run_demo

    return run_demo(duration=args.duration, rate=args.rate, leads=args.leads,
                    web_port=args.web_port, seed=args.seed, kind=args.kind,
                    broker_url=args.broker)


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    from router.harness.bench.latency import run_latency_bench

    if args.compare:
        from router.harness.bench.latency_compare import run_compare

        return run_compare(samples=args.samples, rate=args.rate, isolation=args.isolation)
    if args.hops:
        from router.harness.bench.latency import run_hops

        return run_hops(samples=args.samples, rate=args.rate, isolation=args.isolation)
    return run_latency_bench(samples=args.samples, rate=args.rate, broker=args.broker,
                             isolation=args.isolation)


def _cmd_bench_txn(args: argparse.Namespace) -> int:
    from router.harness.bench.txn_loop import config_from_args, run_txn_bench

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"leadrouter bench-txn: {exc}", file=sys.stderr)
        return 2
    return run_txn_bench(config, broker=args.broker, as_json=args.json)


def _cmd_bench_sla(args: argparse.Namespace) -> int:
    from router.harness.bench.sla import run_sla_bench

    return run_sla_bench(timers=args.timers, budget_seconds=args.budget_seconds,
                         spread_seconds=args.spread_seconds)


def _cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from router.harness.bench.phases import QUICK, BenchConfig
    from router.harness.bench.run import run_bench

    config = QUICK if args.quick else BenchConfig()
    if args.memory:
        config = replace(config, mode="memory")
    if args.leads:
        config = replace(config, leads=args.leads)
    if args.touchpoints:
        config = replace(config, touchpoints=args.touchpoints)
    return run_bench(broker=args.broker, config=config)


def _cmd_verify(args: argparse.Namespace) -> int:
    from router.tools.verify import run_verify

    return run_verify(args.broker, args.topic_prefix, args.rules, args.json, args.strict)


def _cmd_roster_apply(args: argparse.Namespace) -> int:
    from router.tools.roster import run_apply

    return run_apply(args.file, args.broker, args.topic_prefix, args.dry_run)


def _cmd_roster_export(args: argparse.Namespace) -> int:
    from router.tools.roster import run_export

    return run_export(args.broker, args.topic_prefix, args.out)


def _cmd_export(args: argparse.Namespace) -> int:
    from router.tools.export import run_export

    return run_export(since=_history_since(args), start=args.start, end=args.end,
                      broker=args.broker, prefix=args.topic_prefix, out=args.out,
                      inputs_only=args.inputs_only)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from router.tools.simulate import run_simulate

    return run_simulate(rules=args.rules, baseline=args.baseline, since=_history_since(args),
                        start=args.start, end=args.end, history_file=args.history,
                        broker=args.broker, prefix=args.topic_prefix, out=args.out,
                        as_json=args.json, workers=args.workers, quiet=args.quiet)


def _cmd_report(args: argparse.Namespace) -> int:
    from router.tools.report import run_report

    return run_report(since=_history_since(args), start=args.start, end=args.end,
                      history_file=args.history, broker=args.broker, prefix=args.topic_prefix,
                      out=args.out, as_json=args.json)


def _history_since(args: argparse.Namespace) -> str | None:
    """The --since to use: the command's default only when neither --since nor --from was
    given, so `--from` alone works and `--since` with `--from` is still refused."""
    since: str | None = args.since
    if since is None and args.start is None:
        default: str | None = args.default_since
        return default
    return since


def _add_history_arguments(p: argparse.ArgumentParser, since: str | None) -> None:
    """The range and the source of a history, as `verify` names the broker and prefix."""
    import os

    # --since has no argparse default: one would always be "given" beside --from, and the
    # range then refused as both; _history_since applies it when neither is on the line
    p.add_argument("--since", default=None, help=f"a duration such as 7d, 12h, 2w"
                   f" (default: {since or 'everything'} unless --from is given)")
    p.add_argument("--from", dest="start", default=None, help="start, RFC 3339 (instead of"
                   " --since)")
    p.set_defaults(default_since=since)
    p.add_argument("--to", dest="end", default=None, help="end, RFC 3339 (default: now)")
    p.add_argument("--broker", default=os.environ.get("LEADROUTER_BROKER",
                                                      "kafka://127.0.0.1:9092"))
    p.add_argument("--topic-prefix", default=os.environ.get("LEADROUTER_TOPIC_PREFIX", ""))


def _cmd_chaos(args: argparse.Namespace) -> int:
    from router.harness.chaos import main as chaos_main

    return chaos_main(args)


def _cmd_notify(args: argparse.Namespace) -> int:
    from router.notify.cli import main as notify_main

    return notify_main(args)


def _get_json(url: str) -> tuple[int, object]:
    import urllib.error
    import urllib.request

    import orjson

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def _inspect(args: argparse.Namespace, path: str, render_name: str) -> int:
    import urllib.error

    import orjson

    from router.service import inspection

    url = args.worker.rstrip("/") + path
    try:
        status, body = _get_json(url)
    except (urllib.error.URLError, OSError) as exc:
        print(f"leadrouter: no worker answered at {url}: {exc}", file=sys.stderr)
        return 2
    if status != 200:
        print(f"leadrouter: {url} answered HTTP {status}: {body}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        print(getattr(inspection, render_name)(body))
    return 0


def _cmd_lead_show(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    return _inspect(args, f"/leads/{quote(args.lead_id, safe='')}", "render_lead")


def _cmd_reps(args: argparse.Namespace) -> int:
    return _inspect(args, "/reps", "render_reps")


def build_parser() -> argparse.ArgumentParser:
    from router.settings import add_arguments

    parser = argparse.ArgumentParser(prog="leadrouter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"leadrouter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run a local broker: Apache Kafka (KRaft) or Tansu")
    p.add_argument("--kind", choices=("kafka", "tansu"), default=None,
                   help="kafka (default; needs Java 17 and Maven) or tansu (pip-only fallback);"
                        " default from LEADROUTER_LOCAL_BROKER")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--nodes", type=int, default=1, choices=(1, 3),
                   help="3: three KRaft voters, replication factor 3, min.insync.replicas 2")
    p.add_argument("--data-dir", default=None,
                   help="keep topics, offsets and groups here across restarts (default: a"
                        " temporary folder removed on stop)")
    p.set_defaults(func=_cmd_broker)

    # no abbreviations: "--sasl-password" must not quietly mean "--sasl-password-file"
    p = sub.add_parser("worker", help="run a router worker against a Kafka broker",
                       allow_abbrev=False)
    add_arguments(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("demo", help="broker + worker + synthetic traffic, shown live")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=40.0, help="touchpoints per second")
    p.add_argument("--leads", type=int, default=400, help="distinct synthetic leads")
    p.add_argument("--web-port", type=int, default=6066)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--kind", choices=("kafka", "tansu"), default=None,
                   help="the local broker (default: LEADROUTER_LOCAL_BROKER, else kafka)")
    p.add_argument("--broker", default=None, metavar="URL",
                   help="use this running broker (kafka://host:port) instead of starting one;"
                        " it is left running, with its topics, at the end")
    p.set_defaults(func=_cmd_demo)

    lead = sub.add_parser("lead", help="inspect one lead").add_subparsers(
        dest="lead_command", required=True
    )
    p = lead.add_parser("show", help="stage, criteria with their numbers, holder, SLA, events")
    p.add_argument("lead_id")
    p.add_argument("--worker", default="http://127.0.0.1:6066",
                   help="any worker's HTTP URL (it asks the owners)")
    p.add_argument("--json", action="store_true", help="print the raw view")
    p.set_defaults(func=_cmd_lead_show)

    p = sub.add_parser("reps", help="reps with open leads, capacity, out of office; queues")
    p.add_argument("--worker", default="http://127.0.0.1:6066",
                   help="any worker's HTTP URL (it asks the routing owner)")
    p.add_argument("--json", action="store_true", help="print the raw view")
    p.set_defaults(func=_cmd_reps)

    rules = sub.add_parser("rules", help="rules file tools").add_subparsers(
        dest="rules_command", required=True
    )
    p = rules.add_parser("check", help="validate a rules file; errors name line and field")
    p.add_argument("file")
    p.set_defaults(func=_cmd_rules_check)

    schemas = sub.add_parser("schemas", help="JSON Schemas of the topics").add_subparsers(
        dest="schemas_command", required=True
    )
    p = schemas.add_parser("export", help="write one JSON Schema per event")
    p.add_argument("--out", default="schemas")
    p.set_defaults(func=_cmd_schemas_export)

    p = sub.add_parser(
        "bench-latency",
        help="touchpoint -> lead.sql latency on one worker (embedded broker unless --broker)",
    )
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--rate", type=float, default=200.0, help="triggering touchpoints per second")
    p.add_argument("--broker", default=None, help="existing broker URL (with a running worker)")
    p.add_argument("--isolation", choices=("read_committed", "read_uncommitted"),
                   default="read_committed",
                   help="the reader's isolation level (read_committed: what downstream sees of"
                        " an exactly-once worker)")
    p.add_argument("--compare", action="store_true",
                   help="one column per transaction switch and broker setting, each on a fresh"
                        " local broker and worker (router/harness/bench/latency_compare.py)")
    p.add_argument("--hops", action="store_true",
                   help="trace the worker and print where each millisecond of a transaction"
                        " goes (router/harness/bench/hops.py)")
    p.set_defaults(func=_cmd_bench_latency)

    from router.harness.bench.txn_loop import add_arguments as add_bench_txn_arguments

    p = sub.add_parser("bench-txn", help="the same exactly-once consume-transform-produce loop"
                       " with aiokafka and confluent-kafka, side by side (its own broker)")
    add_bench_txn_arguments(p)
    p.set_defaults(func=_cmd_bench_txn)

    p = sub.add_parser("verify", help="check a run's outputs against its inputs (exit 1 on"
                       " any violation)")
    p.add_argument("--broker", default="kafka://127.0.0.1:9092")
    p.add_argument("--topic-prefix", default="")
    p.add_argument("--rules", default=None, help="the rules file the workers ran with")
    p.add_argument("--json", action="store_true", help="also print a JSON summary line")
    p.add_argument("--strict", action="store_true", help="exactly-once runs: read_committed,"
                   " every expected output exactly once, no repeated event id")
    p.set_defaults(func=_cmd_verify)

    roster = sub.add_parser("roster", help="reps and named accounts as a YAML file").add_subparsers(
        dest="roster_command", required=True
    )
    p = roster.add_parser("apply", help="validate a roster file, show the diff against the"
                          " topics, publish upserts and tombstones")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    p2 = roster.add_parser("export", help="write what routing.reps / routing.accounts hold as"
                           " a roster file")
    p2.add_argument("--out", default=None, help="file to write (default: stdout)")
    for q in (p, p2):
        q.add_argument("--broker", default=None,
                       help="Kafka bootstrap URL [env LEADROUTER_BROKER]")
        q.add_argument("--topic-prefix", default=None, help="[env LEADROUTER_TOPIC_PREFIX]")
    p.set_defaults(func=_cmd_roster_apply)
    p2.set_defaults(func=_cmd_roster_export)

    p = sub.add_parser("export", help="write a time range of the topics as NDJSON history"
                       " (for simulate/report --history)")
    _add_history_arguments(p, "30d")
    p.add_argument("--out", default=None, help="file to write (default: stdout)")
    p.add_argument("--inputs-only", action="store_true",
                   help="leave out transitions, assignments and SLA events")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("simulate", help="replay history under a candidate rules file beside"
                       " the current one; writes nothing to any topic", allow_abbrev=False)
    p.add_argument("--rules", required=True, help="the candidate rules file")
    p.add_argument("--baseline", default=None,
                   help="the current rules file [env LEADROUTER_RULES; default: shipped]")
    _add_history_arguments(p, "90d")
    p.add_argument("--history", default=None, help="an NDJSON export instead of the broker")
    p.add_argument("--out", default=None, help="also write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--workers", type=int, default=None,
                   help="replay processes (default: one per CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("report", help="the weekly funnel review from the output and activity"
                       " topics", allow_abbrev=False)
    _add_history_arguments(p, "7d")
    p.add_argument("--history", default=None, help="an NDJSON export instead of the broker")
    p.add_argument("--out", default=None, help="also write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_report)

    from router.harness.chaos import add_arguments as add_chaos_arguments

    p = sub.add_parser("chaos", help="fault injection under traffic, then verify (local"
                       " broker); --kill-loop for repeated worker crashes")
    add_chaos_arguments(p)
    p.set_defaults(func=_cmd_chaos)

    from router.notify.cli import add_arguments as add_notify_arguments

    p = sub.add_parser("notify", help="post assignments and SLA alerts to a Slack-compatible"
                       " webhook", allow_abbrev=False)
    add_notify_arguments(p)
    p.set_defaults(func=_cmd_notify)

    p = sub.add_parser("bench-sla", help="delay from SLA deadline to sla.breached (embedded)")
    p.add_argument("--timers", type=int, default=300)
    p.add_argument("--budget-seconds", type=float, default=10.0)
    p.add_argument("--spread-seconds", type=float, default=10.0)
    p.set_defaults(func=_cmd_bench_sla)

    p = sub.add_parser("bench", help="router vs faust floor vs raw aiokafka: throughput, latency,"
                       " memory, state, restore (embedded broker unless --broker)")
    p.add_argument("--broker", default=None, help="existing broker URL (the bench starts its"
                   " own workers on it)")
    p.add_argument("--quick", action="store_true", help="a small load (a smoke run, about 70 s)")
    p.add_argument("--memory", action="store_true", help="only load one worker, kill it and"
                   " restore: peak RSS, state and restore time (with LEADROUTER_STORE=rocksdb"
                   " and --leads 1000000 for a large state)")
    p.add_argument("--leads", type=int, default=0, help="leads in the mix (default 100,000)")
    p.add_argument("--touchpoints", type=int, default=0,
                   help="touchpoints in the mix (default 200,000)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
