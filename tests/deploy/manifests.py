"""Manifest-parsing helpers shared by the deploy tests: where deploy/ keeps the dashboard and
the alerts, the PromQL expressions they query, and the metric names and labels router/metrics.py
declares. test_manifests.py checks the expressions statically; test_metric_names.py checks the
same names against a live worker's /metrics.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

import router.metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "leadrouter.json"
ALERTS = PROMETHEUS_DIR / "alerts.yml"

# --------------------------------------------------------------------------- PromQL helpers

_PROMQL_WORDS = """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk
    limit_ratio and or unless by without on ignoring group_left group_right bool offset
    atan2 inf nan
    abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters double_exponential_smoothing hour idelta increase irate
    label_join label_replace ln log2 log10 minute month predict_linear rate resets round
    scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector
    year avg_over_time min_over_time max_over_time sum_over_time count_over_time
    quantile_over_time stddev_over_time stdvar_over_time last_over_time present_over_time
    mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi
"""
# aggregations, operators, modifiers, literals and functions (functions are followed by "("
# anyway; listed so that a space before the parenthesis is harmless)
PROMQL_WORDS = frozenset(_PROMQL_WORDS.split())
PROMETHEUS_GENERATED = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
TARGET_LABELS = frozenset({"job", "instance"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside strings, label matchers,
    range brackets and grouping clauses that are not PromQL functions or keywords."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-zA-Z_$]+", " ", s)
    s = _GROUPING.sub(r" \1 ", s)
    return {name for name in _IDENT.findall(s) if name.lower() not in PROMQL_WORDS}


@dataclasses.dataclass(frozen=True)
class Matcher:
    metric: str | None
    label: str
    op: str
    value: str


def promql_matchers(expr: str) -> list[Matcher]:
    return [
        Matcher(metric or None, label, op, value)
        for metric, body in _SELECTOR.findall(expr)
        for label, op, value in _MATCHER.findall(body)
    ]


def promql_grouping_labels(expr: str) -> set[str]:
    s = _STRING.sub('""', expr)
    return {label.strip() for _, body in _GROUPING.findall(s)
            for label in body.split(",") if label.strip()}


def dashboard() -> dict[str, Any]:
    return typing.cast(dict[str, Any], json.loads(DASHBOARD.read_text(encoding="utf-8")))


def dashboard_panels() -> list[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))  # panels inside collapsed rows

    return list(walk(dashboard()["panels"]))


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in alert_rules()]


def all_exprs() -> list[str]:
    return dashboard_exprs() + alert_exprs()


def grafana_to_promql(expr: str) -> str:
    """Dashboard queries use Grafana's variables; give them values Prometheus accepts."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
            .replace("$__range", "1h").replace("$job", "leadrouter"))


def metric_labels() -> dict[str, set[str]]:
    """Sample name -> label names, for everything router/metrics.py registers."""
    out: dict[str, set[str]] = {}
    for obj in vars(router.metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        base = obj._name  # prometheus_client keeps the name without the _total suffix
        labels = set(obj._labelnames)
        kind = obj._type
        if kind == "counter":
            out[base + "_total"] = labels
        elif kind == "histogram":
            out[base + "_bucket"] = labels | {"le"}
            out[base + "_count"] = labels
            out[base + "_sum"] = labels
        else:
            out[base] = labels
    for family in router.metrics.REGISTRY.collect():
        if family.name.startswith(("process_", "python_")):
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out
