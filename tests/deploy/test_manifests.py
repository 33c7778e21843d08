"""Static checks of deploy/: everything parses, references resolve, and names are real.

No Docker here, so these tests check what can be checked without one: every YAML parses; the
compose file and the Kubernetes manifests point at files, services, ports and settings that
exist; every `LEADROUTER_*` name is a setting router/settings.py reads; the rules shipped to
the workers load; probes, users and volumes line up with the image; the dashboard and the
alerts are valid PromQL over metrics and labels router/metrics.py declares (with label values
the router emits); promtool checks and unit-tests the alerts when it is installed.

The PromQL helpers are in manifests.py, shared with tests/deploy/test_metric_names.py, which
checks the same names against a live worker's /metrics.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from router import settings as settings_module
from router.adapters.wire import REFUSAL_REASONS
from router.domain.events import (
    Assignment,
    QualificationPath,
    RejectionReason,
    SalesActivityType,
    SlaClass,
    SlaEvent,
    Stage,
    TouchpointType,
)
from router.domain.rules import load_rules
from tests.deploy.manifests import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_DIR,
    PROMETHEUS_GENERATED,
    ROOT,
    TARGET_LABELS,
    Matcher,
    alert_exprs,
    alert_rules,
    all_exprs,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    grafana_to_promql,
    metric_labels,
    promql_grouping_labels,
    promql_matchers,
    promql_metric_names,
)

K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"

# env names in deploy/ that are not worker settings but are read by something else
NON_SETTING_ENV = {"LEADROUTER_REQUIRE_PROMTOOL"}  # this test module's own switch

# ------------------------------------------------------------------------------ file helpers

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def real_setting_env_names() -> set[str]:
    """The environment names router.settings.from_env reads: one per Settings field."""
    return {settings_module.env_name(f.name) for f in dataclasses.fields(settings_module.Settings)}


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def readme_text_outside_code() -> str:
    return re.sub(r"^```.*?^```", "", README.read_text(encoding="utf-8"),
                  flags=re.MULTILINE | re.DOTALL)


def readme_anchors() -> set[str]:
    return {github_anchor(m.group(1))
            for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", readme_text_outside_code(),
                                 re.MULTILINE)}


# ----------------------------------------------------------------------------- Dockerfile

@dataclasses.dataclass
class Instruction:
    op: str
    args: str
    stage: int


def dockerfile() -> list[Instruction]:
    lines: list[str] = []
    buf = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment line inside a continuation
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    out: list[Instruction] = []
    stage = -1
    for line in lines:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, args.strip(), stage))
    return out


def docker_args(instructions: list[Instruction], stage: int) -> dict[str, str]:
    """ARG defaults visible in a stage (global ARGs before the first FROM, then the stage's)."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.op == "ARG" and ins.stage in (-1, stage):
            name, _, default = ins.args.partition("=")
            values[name] = default.strip('"')
    return values


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def docker_env(instructions: list[Instruction], stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.op == "ENV" and ins.stage == stage:
            for pair in shlex.split(ins.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def final_stage(instructions: list[Instruction]) -> int:
    return max(ins.stage for ins in instructions)


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics, enough for our patterns: last match wins, `!`
    re-includes, a pattern matching a directory covers everything below it."""
    patterns = [line.strip() for line in
                (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.strip().startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            excluded = not negate
    return excluded


# -------------------------------------------------------------------------------- compose

def compose() -> dict[str, Any]:
    return typing.cast(dict[str, Any], load_yaml(DEPLOY / "compose.yaml"))


def compose_workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if isinstance(svc.get("build"), dict)
            and svc["build"].get("dockerfile") == "deploy/Dockerfile"}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short syntax `src:dst[:mode]` or long."""
    mounts = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            mounts.append((str(item.get("source", "")), str(item["target"])))
        else:
            source, target = str(item).split(":")[:2]
            mounts.append((source, target))
    return mounts


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def worker_effective_env(service: dict[str, Any]) -> dict[str, str]:
    instructions = dockerfile()
    return {**docker_env(instructions, final_stage(instructions)), **compose_env(service)}


# ------------------------------------------------------------------------------------ k8s

def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker_container() -> dict[str, Any]:
    containers = k8s("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return typing.cast(dict[str, Any], containers[0])


def k8s_worker_env() -> dict[str, str]:
    """The worker's environment as Kubernetes assembles it: envFrom first, env over it."""
    container = worker_container()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update({k: str(v) for k, v in k8s("ConfigMap", ref)["data"].items()})
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: use a ConfigMap or a file, not valueFrom"
        env[item["name"]] = str(item["value"])
    return env


def container_port(container: dict[str, Any], port: int | str) -> int:
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return int(p["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ================================================================================== tests


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_under_deploy_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(d is not None for d in docs), f"{path}: empty document"


def test_setting_names_are_derived_the_way_settings_reads_them() -> None:
    names = real_setting_env_names()
    assert {"LEADROUTER_BROKER", "LEADROUTER_RULES", "LEADROUTER_DATA_DIR",
            "LEADROUTER_WEB_HOST", "LEADROUTER_SASL_PASSWORD_FILE"} <= names
    # the derivation is the one from_env uses: each name really sets its field (fields whose
    # validation refuses the probe value are skipped; enough of them must take it)
    honoured = set()
    for f in dataclasses.fields(settings_module.Settings):
        numeric = str(f.type).startswith(("int", "float"))
        probe = "7" if numeric else "probe-value"
        try:
            got = settings_module.from_env({settings_module.env_name(f.name): probe})
        except ValueError:
            continue
        assert str(getattr(got, f.name)).removesuffix(".0") == probe, f.name
        honoured.add(f.name)
    assert {"broker", "rules", "data_dir", "web_host", "web_port", "partitions",
            "sasl_password_file"} <= honoured


def test_every_leadrouter_env_name_in_deploy_is_a_real_setting() -> None:
    real = real_setting_env_names()
    used: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for name in re.findall(r"LEADROUTER_[A-Z0-9_]*[A-Z0-9]",
                                   path.read_text(encoding="utf-8")):
                used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert used, "no LEADROUTER_* names found under deploy/ at all"
    unknown = {name: files for name, files in used.items()
               if name not in real | NON_SETTING_ENV}
    assert not unknown, f"not settings in router/settings.py: {unknown}"


# ------------------------------------------------------------------------------ Dockerfile

def test_dockerfile_is_multi_stage_and_installs_with_constraints() -> None:
    ins = dockerfile()
    froms = [i for i in ins if i.op == "FROM"]
    assert len(froms) >= 2
    assert any(" AS builder" in f.args or " as builder" in f.args for f in froms[:-1])
    runtime = final_stage(ins)
    image = expand(froms[-1].args.split()[0], docker_args(ins, runtime))
    assert image.startswith("python:3.11-slim"), image
    builder_runs = " ".join(i.args for i in ins if i.op == "RUN" and i.stage < runtime)
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", builder_runs), builder_runs
    assert any(i.op == "COPY" and "--from=builder" in i.args for i in ins if i.stage == runtime)


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    for ins in dockerfile():
        if ins.op != "COPY" or "--from" in ins.args:
            continue
        *sources, _dest = [a for a in ins.args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
            assert not dockerignore_excludes(source.rstrip("/")), f"{source} is dockerignored"
    for needed in ("router/cli.py", "router/domain/default_rules.yaml", "router/py.typed"):
        assert (ROOT / needed).exists()
        assert not dockerignore_excludes(needed), f"{needed} is dockerignored"
    assert dockerignore_excludes(".venv/bin/python")
    assert dockerignore_excludes("tests/unit/test_rules.py")


def test_dockerfile_runtime_user_port_health_and_entrypoint() -> None:
    ins = dockerfile()
    runtime = final_stage(ins)
    args = docker_args(ins, runtime)
    env = docker_env(ins, runtime)
    [user] = [expand(i.args, args) for i in ins if i.op == "USER" and i.stage == runtime]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: a fixed, non-root numeric UID"
    assert env["LEADROUTER_WEB_HOST"] == "0.0.0.0", "loopback is unreachable from outside"
    port = env.get("LEADROUTER_WEB_PORT", str(settings_module.Settings.web_port))
    exposed = {p.split("/")[0] for i in ins if i.op == "EXPOSE" for p in i.args.split()}
    assert port in exposed
    [health] = [i.args for i in ins if i.op == "HEALTHCHECK"]
    assert "/health" in health and "LEADROUTER_WEB_PORT" in health
    [entry] = [i.args for i in ins if i.op == "ENTRYPOINT" and i.stage == runtime]
    assert json.loads(entry) == ["leadrouter", "worker"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^leadrouter = "router\.cli:main"', pyproject, re.MULTILINE)
    volumes = [v for i in ins if i.op == "VOLUME" for v in json.loads(i.args)]
    assert env["LEADROUTER_DATA_DIR"] in volumes
    for key in env:
        if key.startswith("LEADROUTER_"):
            assert key in real_setting_env_names(), key
    settings_module.from_env({k: v for k, v in env.items() if k.startswith("LEADROUTER_")})


# --------------------------------------------------------------------------------- compose

def test_compose_kafka_is_kraft() -> None:
    kafka = compose()["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"]), kafka["image"]
    env = compose_env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for key in ("KAFKA_NODE_ID", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LISTENERS",
                "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CLUSTER_ID"):
        assert env.get(key), key
    assert not any("ZOOKEEPER" in k for k in env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_workers() -> None:
    services = compose()["services"]
    workers = compose_workers()
    assert len(workers) >= 2, "two or more workers"
    data_volumes = set()
    for name, svc in workers.items():
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        assert (context / svc["build"]["dockerfile"]).is_file()
        env = worker_effective_env(svc)
        settings = settings_module.from_env(
            {k: v for k, v in env.items() if k.startswith("LEADROUTER_")})
        assert settings.broker == "kafka://kafka:9092" and "kafka" in services
        assert "LEADROUTER_BROKER_QUIRKS" not in env, "quirks are for the embedded broker only"
        assert settings.broker_quirks == "auto"  # the default: recognise the broker
        assert settings.web_host == "0.0.0.0"
        mounts = dict((target, source) for source, target in compose_mounts(svc))
        # rules: a bind-mounted file that loads
        assert settings.rules is not None, f"{name}: no LEADROUTER_RULES"
        rules_source = mounts[settings.rules]
        assert is_bind(rules_source)
        load_rules(DEPLOY / rules_source)
        # data: a named volume of its own at LEADROUTER_DATA_DIR
        volume = mounts[settings.data_dir]
        assert not is_bind(volume) and volume in compose()["volumes"], volume
        data_volumes.add(volume)
        # the health check hits the worker's own port
        test = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{settings.web_port}/ready" in test
    assert len(data_volumes) == len(workers), "each worker needs its own data volume"


def test_compose_bind_mounts_and_named_volumes_exist() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        for source, target in compose_mounts(svc):
            if is_bind(source):
                assert (DEPLOY / source).exists(), f"{name}: {source} -> {target} is missing"
            else:
                assert source in doc.get("volumes", {}), f"{name}: undeclared volume {source}"
        for dep in svc.get("depends_on", []):
            assert dep in doc["services"], f"{name} depends on unknown {dep}"


def test_prometheus_scrapes_every_compose_worker_and_loads_the_alerts() -> None:
    doc = compose()
    prom_svc = doc["services"]["prometheus"]
    mounts = {target: source for source, target in compose_mounts(prom_svc)}
    config_path = next(a.split("=", 1)[1] for a in prom_svc["command"]
                       if a.startswith("--config.file="))
    assert Path(DEPLOY / mounts[config_path]).resolve() == PROMETHEUS_DIR / "prometheus.yml"
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "leadrouter"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {f"{name}:{settings_module.from_env(worker_effective_env(svc)).web_port}"
                for name, svc in compose_workers().items()}
    assert targets == expected
    config_dir = Path(config_path).parent
    for rule_file in config["rule_files"]:
        in_container = str(config_dir / rule_file)
        assert in_container in mounts, f"{rule_file} is not mounted next to prometheus.yml"
        assert (DEPLOY / mounts[in_container]).resolve() == ALERTS


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {target: (DEPLOY / source).resolve() for source, target in compose_mounts(grafana)
              if is_bind(source)}
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/leadrouter.yaml")
    [provider] = providers["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning/dashboards"] == (
        DEPLOY / "grafana/provisioning/dashboards")
    assert mounts["/etc/grafana/provisioning/datasources"] == (
        DEPLOY / "grafana/provisioning/datasources")
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    [ds] = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    home = compose_env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert mounts[str(Path(home).parent)] == DASHBOARD.parent
        assert (DASHBOARD.parent / Path(home).name).is_file()


# ------------------------------------------------------------------------------------- k8s

def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    top_level = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert resources == top_level
    assert "namespace" not in kustomization


def test_k8s_manifests_are_namespace_agnostic_and_consistently_labelled() -> None:
    for doc in k8s_docs():
        assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "leadrouter"


def test_statefulset_probes_security_and_resources() -> None:
    sts = k8s("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = worker_container()
    env = k8s_worker_env()
    settings = settings_module.from_env(env)
    # probes hit the port the worker serves on
    assert settings.web_host == "0.0.0.0"
    web_port = settings.web_port
    assert container_port(container, "http") == web_port
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready"),
                        ("startupProbe", "/health")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == web_port, probe
    annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == web_port
    # non-root, the image's UID
    pod_sc, c_sc = pod.get("securityContext", {}), container.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True or c_sc.get("runAsNonRoot") is True
    ins = dockerfile()
    image_uid = docker_args(ins, final_stage(ins))["APP_UID"]
    assert str(c_sc.get("runAsUser", pod_sc.get("runAsUser"))) == image_uid
    assert c_sc.get("allowPrivilegeEscalation") is False
    for key in ("requests", "limits"):
        assert container["resources"].get(key), key
    assert "memory" in container["resources"]["limits"]


def test_statefulset_volumes_rules_and_secret() -> None:
    sts = k8s("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = worker_container()
    settings = settings_module.from_env(k8s_worker_env())
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    for name in mounts.values():
        assert name in volumes or name in claims, f"mount of unknown volume {name}"
    # the data dir is a per-pod claim
    assert mounts.get(settings.data_dir) in claims, "LEADROUTER_DATA_DIR is not a claim"
    # the rules file is a key of the rules ConfigMap, mounted where LEADROUTER_RULES points
    assert settings.rules is not None
    rules_path = Path(settings.rules)
    rules_volume = volumes[mounts[str(rules_path.parent)]]
    configmap = k8s("ConfigMap", rules_volume["configMap"]["name"])
    assert rules_path.name in configmap["data"]
    # the SASL password is a file from a Secret, never a literal
    assert "LEADROUTER_SASL_PASSWORD" not in k8s_worker_env()
    password_dir = str(Path(settings.sasl_password_file).parent)
    assert "secret" in volumes[mounts[password_dir]], "the password file must come from a Secret"
    # the worker's ConfigMap holds no secrets
    for key in k8s("ConfigMap", "leadrouter-config")["data"]:
        assert "PASSWORD" not in key, key


def test_k8s_rules_configmap_loads_and_matches_deploy_rules(tmp_path: Path) -> None:
    text = k8s("ConfigMap", "leadrouter-rules")["data"]["rules.yaml"]
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    rules = load_rules(path)
    compose_rules = load_rules(DEPLOY / "rules.yaml")
    assert rules.version == compose_rules.version, "deploy/rules.yaml and the ConfigMap drifted"


def test_k8s_services_pdb_and_service_monitor_select_the_workers() -> None:
    sts = k8s("StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(sts["spec"]["selector"]["matchLabels"], pod_labels)
    headless = k8s("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    container = worker_container()
    services = [d for d in k8s_docs() if d["kind"] == "Service"]
    assert len(services) >= 2, "headless + metrics Service"
    for svc in services:
        assert selector_matches(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            container_port(container, port["targetPort"])
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    monitor = k8s("ServiceMonitor")
    [metrics] = [s for s in services
                 if selector_matches(monitor["spec"]["selector"]["matchLabels"],
                                     s["metadata"]["labels"])]
    assert metrics["spec"].get("publishNotReadyAddresses") is True, (
        "not-ready workers must be scraped for the not-ready alert")
    assert metrics["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "leadrouter"
    ports = {p["name"] for p in metrics["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    pod = sts["spec"]["template"]["spec"]
    assert k8s("ServiceAccount")["metadata"]["name"] == pod["serviceAccountName"]


def test_kustomize_renders_when_kubectl_is_installed() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "ConfigMap", "Service", "Service",
                            "StatefulSet", "PodDisruptionBudget"])


# ------------------------------------------------------------------------ dashboard, alerts

REQUIRED_DASHBOARD_METRICS = {
    "leadrouter_touchpoints_processed_total",        # throughput
    "leadrouter_consumer_lag_records",               # consumer lag
    "leadrouter_routing_latency_seconds_bucket",     # routing latency
    "leadrouter_transitions_total",                  # SQLs by path
    "leadrouter_sla_events_total",                   # SLA breach rate
    "leadrouter_rejections_total",                   # rejection mix
    "leadrouter_rep_open_leads",                     # open leads per rep
    "leadrouter_pool_queued_leads",                  # queue depth
    "leadrouter_dead_letters_total",                 # dead letters
    "process_resident_memory_bytes",                 # RSS
}


def test_dashboard_parses_and_every_panel_queries_something() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = dashboard_panels()
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"] for v in board["templating"]["list"]}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        for target in p["targets"]:
            assert target.get("expr", "").strip(), f"panel {p['title']!r}: empty query"
        uid = p["datasource"]["uid"]
        assert uid.strip("${}") in variables, f"panel {p['title']!r}: unknown datasource {uid}"
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
    used = {n for e in dashboard_exprs() for n in promql_metric_names(e)}
    assert used >= REQUIRED_DASHBOARD_METRICS, REQUIRED_DASHBOARD_METRICS - used
    sql_by_path = [e for e in dashboard_exprs()
                   if "leadrouter_transitions_total" in e and 'stage="sql"' in e]
    assert any("path" in promql_grouping_labels(e) for e in sql_by_path)
    rejection = [e for e in dashboard_exprs() if "leadrouter_rejections_total" in e]
    assert any("reason" in promql_grouping_labels(e) for e in rejection)


def test_alerts_have_severity_summary_and_a_runbook_section() -> None:
    anchors = readme_anchors()
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        runbook = rule["annotations"]["runbook"]
        file, _, anchor = runbook.partition("#")
        assert file == "deploy/README.md" and (ROOT / file).is_file(), runbook
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in deploy/README.md"
    for link in re.findall(r"\]\(#([^)]+)\)", readme_text_outside_code()):
        assert link in anchors, f"deploy/README.md links to a missing section #{link}"
    assert "overlays-prod-kustomizationyaml" not in anchors, "code blocks are not headings"
    used = {n for e in alert_exprs() for n in promql_metric_names(e)}
    for needed in ("leadrouter_sla_events_total", "leadrouter_consumer_lag_records",
                   "leadrouter_dead_letters_total", "leadrouter_pool_queued_leads",
                   "leadrouter_ready", "up"):
        assert needed in used, f"no alert on {needed}"


def test_promql_names_and_labels_exist_in_router_metrics() -> None:
    declared = metric_labels()
    for expr in all_exprs():
        names = promql_metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        for name in names - PROMETHEUS_GENERATED:
            assert name in declared, f"{name} (in {expr!r}) is not in router/metrics.py"
        known = TARGET_LABELS | {label for n in names for label in declared.get(n, set())}
        for label in promql_grouping_labels(expr):
            assert label in known, f"grouping label {label!r} unknown in {expr!r}"
        for m in promql_matchers(expr):
            if m.metric is not None and m.metric not in PROMETHEUS_GENERATED:
                allowed = declared[m.metric] | TARGET_LABELS
                assert m.label in allowed, f"{m.metric} has no label {m.label!r}"


def label_domains() -> dict[tuple[str, str], set[str]]:
    """Values the router can put on the labels the PromQL filters on (from the code)."""
    return {
        ("leadrouter_transitions_total", "stage"): {s.value for s in Stage},
        ("leadrouter_transitions_total", "path"): {p.value for p in QualificationPath} | {"none"},
        ("leadrouter_sla_events_total", "type"): set(
            typing.get_args(SlaEvent.model_fields["type"].annotation)),
        ("leadrouter_sla_events_total", "sla_class"): {c.value for c in SlaClass},
        ("leadrouter_first_touch_response_seconds_bucket", "sla_class"): {
            c.value for c in SlaClass},
        ("leadrouter_dead_letters_total", "reason"): set(REFUSAL_REASONS),
        ("leadrouter_rejections_total", "reason"): {r.value for r in RejectionReason},
        ("leadrouter_recycled_total", "because"): {a.value for a in SalesActivityType},
        ("leadrouter_touchpoints_processed_total", "type"): {t.value for t in TouchpointType},
        ("leadrouter_assignments_total", "type"): set(
            typing.get_args(Assignment.model_fields["type"].annotation)),
    }


def test_promql_label_values_are_values_the_router_emits() -> None:
    domains = label_domains()
    checked = 0
    for expr in all_exprs():
        for m in promql_matchers(expr):
            domain = domains.get((m.metric or "", m.label))
            if domain is None:
                continue
            values = m.value.split("|") if m.op in ("=~", "!~") else [m.value]
            for value in values:
                assert value in domain, f'{m.metric}{{{m.label}="{value}"}}: not in {domain}'
                checked += 1
    assert checked >= 5, "expected the dashboard and alerts to filter on stage, type, reason"


def test_promql_parser_finds_names_and_ignores_functions_and_labels() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, pool) (rate(foo_seconds_bucket{job=~"$job",'
            ' x!="by (y)"}[$__rate_interval]))) > 1e3 and on (pool)'
            ' deriv(sum by (pool) (bar:ratio)[10m:1m]) > 0 or baz offset 10m unless vector(0)'
            ' or sum without (instance) (qux{a="1"} == bool 2)')
    assert promql_metric_names(expr) == {"foo_seconds_bucket", "bar:ratio", "baz", "qux"}
    assert promql_grouping_labels(expr) == {"le", "pool", "instance"}
    assert promql_matchers(expr) == [
        Matcher("foo_seconds_bucket", "job", "=~", "$job"),
        Matcher("foo_seconds_bucket", "x", "!=", "by (y)"),
        Matcher("qux", "a", "=", "1"),
    ]


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("LEADROUTER_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not on PATH and LEADROUTER_REQUIRE_PROMTOOL=1")
        pytest.skip("promtool is not on PATH (apt-get install prometheus); set"
                    " LEADROUTER_REQUIRE_PROMTOOL=1 to make this a failure")
    return found


def run_promtool(*args: str, cwd: Path) -> None:
    tool = promtool()
    assert tool is not None
    out = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


def test_promtool_check_rules() -> None:
    run_promtool("check", "rules", str(ALERTS), cwd=PROMETHEUS_DIR)


def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    for name in ("alerts.yml", "alerts.test.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    run_promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)


def test_promtool_check_config(tmp_path: Path) -> None:
    # a copy laid out as compose mounts it (alerts.yml next to prometheus.yml)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no offline 'check expression'; a rules file of recording rules does it."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run_promtool("check", "rules", str(path), cwd=tmp_path)


def test_compose_runs_the_kafka_version_and_broker_settings_the_tests_run_on() -> None:
    """deploy/ and the suite prove things on the same broker: same version, and the broker
    settings the worker's topic handling relies on."""
    from router.harness.brokers.kafka import KafkaBroker
    from router.harness.brokers.kafka_jars import KAFKA_VERSION

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = {k: str(v) for k, v in kafka["environment"].items()}
    launcher = KafkaBroker(data_dir=ROOT / ".leadrouter" / "unused").plan()
    node = launcher.members[0]
    node.root.mkdir(parents=True, exist_ok=True)
    try:
        launcher._write_config(node, f"1@127.0.0.1:{node.controller_port}")
        tested = dict(line.split("=", 1) for line in node.config_path.read_text().splitlines())
    finally:
        shutil.rmtree(ROOT / ".leadrouter" / "unused", ignore_errors=True)
    for key in ("auto.create.topics.enable", "group.initial.rebalance.delay.ms",
                "process.roles"):
        compose_key = "KAFKA_" + key.upper().replace(".", "_")
        assert env[compose_key] == tested[key], key
