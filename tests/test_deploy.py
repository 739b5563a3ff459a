"""deploy/ is checked with what runs on this machine: every YAML and JSON file parses,
Prometheus's own tool accepts the configuration and the alert rules, kustomize renders the
manifests and each broker's overlay, the compose variants give every role the broker they
name, Clarion's settings accept what each variant sets, and every metric they name is one
Clarion exposes (docs/operations.md). No Docker engine or Kubernetes cluster runs here:
the image, the compose files and the manifests are not run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from clarion import cli
from clarion.broker.nats_client import parse_url
from clarion.broker.redis_client import cluster_nodes, is_cluster_url
from clarion.config import Settings
from clarion.domain.models import ALL_CHANNELS, LANES
from servers import _missing

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bclarion_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ["redis-cluster", "nats"]
# The compose services that run Clarion, and the variants over deploy/compose.yaml.
ROLES = ("migrate", "api", "worker", "worker-urgent", "scheduler")
COMPOSE_VARIANTS = ["redis-cluster", "nats"]


def catalogue() -> set[str]:
    """The metric names of docs/operations.md's catalogue."""
    text = (ROOT / "docs" / "operations.md").read_text()
    return {m for m in re.findall(r"^\| `(clarion_[a-z_]+)`", text, re.M)}


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def known(name: str, names: set[str]) -> bool:
    return name in names or base_name(name) in {base_name(n) for n in names}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_every_yaml_and_json_file_parses() -> None:
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    assert len(files) >= 10
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, path
    dashboard = json.loads((DEPLOY / "grafana" / "clarion.json").read_text())
    assert dashboard["uid"] == "clarion-overview"
    assert dashboard["panels"]


def expressions(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("expr", "query") and isinstance(v, str)]
        return found + [e for v in value.values() for e in expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions(v)]
    return []


def test_dashboard_and_alerts_name_only_exposed_metrics() -> None:
    names = catalogue()
    assert "clarion_stream_lag" in names
    sources = [
        json.loads((DEPLOY / "grafana" / "clarion.json").read_text()),
        yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text()),
        yaml.safe_load((KUBERNETES / "base" / "scaledobject.yaml").read_text()),
    ]
    used = {m for source in sources for e in expressions(source) for m in METRIC.findall(e)}
    assert used
    unknown = sorted(m for m in used if not known(m, names))
    assert unknown == []


def test_promtool_accepts_config_and_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        _missing("promtool is not installed (Debian: apt-get install prometheus)")
    rules = run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    # The rules' own tests: a growing dead-letter backlog fires, a steady one does not.
    tests = run(promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_the_dashboard_shows_every_backlog() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "clarion.json").read_text())
    shown = {m for e in expressions(dashboard) for m in METRIC.findall(e)}
    backlogs = {
        "clarion_stream_lag",
        "clarion_stream_pending",
        "clarion_outbox_backlog",
        "clarion_dead_letter_backlog",
        "clarion_dead_letter_backlog_capped",
    }
    assert backlogs - shown == set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects kustomize renders from ``path``, with kubectl's or kustomize's own."""
    if kubectl := shutil.which("kubectl"):
        rendered = run(kubectl, "kustomize", str(path))
    elif tool := shutil.which("kustomize"):
        rendered = run(tool, "build", str(path))
    else:
        pytest.skip("neither kubectl nor kustomize is installed: the manifests are only parsed")
    assert rendered.returncode == 0, rendered.stderr
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


def test_kustomize_renders_probes_and_budgets() -> None:
    objects = kustomize(KUBERNETES)
    kinds = [o["kind"] for o in objects]
    assert kinds.count("Deployment") == 5
    assert kinds.count("PodDisruptionBudget") == 5
    assert "ScaledObject" in kinds
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert settings_of(config_map(objects)).broker_url == "redis://redis:6379/0"


def test_the_kubernetes_workers_take_every_lane_and_channel_between_them() -> None:
    """The channel groups take the bulk lanes, the urgent workers the urgent lanes of every
    channel; each lane of each channel is someone's, and planned by someone."""
    objects = kustomize(KUBERNETES)
    taken: set[tuple[str, str]] = set()
    planned: set[str] = set()
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        if container["args"][0] != "worker":
            continue
        roles = cli._roles(cli.build_parser().parse_args(container["args"]))
        taken |= {(channel, lane) for channel in roles.channels for lane in roles.lanes}
        if roles.planner:
            planned |= set(roles.lanes)
    every = {(str(c), str(lane)) for c in ALL_CHANNELS for lane in LANES}
    assert taken == every
    assert planned == {str(lane) for lane in LANES}
    # KEDA scales the bulk email workers on the lag of the streams they read.
    [scaled] = [o for o in objects if o["kind"] == "ScaledObject"]
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert "normal|low|retry" in query


def config_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == "ConfigMap"]
    return found


def settings_of(config: dict[str, Any]) -> Settings:
    """Clarion's settings from a ConfigMap's or a service's ``CLARION_*`` variables."""
    values = {k.removeprefix("CLARION_").lower(): v for k, v in config["data"].items()}
    return Settings(**values)


def config_refs(value: Any) -> list[str]:
    """The names of the ConfigMaps that ``value`` (an object, or part of one) refers to."""
    if isinstance(value, dict):
        own = [value["configMapRef"]["name"]] if "configMapRef" in value else []
        return own + [n for v in value.values() for n in config_refs(v)]
    if isinstance(value, list):
        return [n for v in value for n in config_refs(v)]
    return []


def check_broker(settings: Settings, variant: str) -> None:
    """What each variant's settings must say: the broker, and where the shared state is."""
    if variant == "redis-cluster":
        assert is_cluster_url(settings.broker_url)
        _, nodes = cluster_nodes(settings.broker_url)
        assert len(nodes) >= 3
        # Twice the three masters (docs/operations.md, "Redis Cluster").
        assert settings.broker_shards == 6
        # The cluster also holds the rate limits, breakers and live inbox events.
        assert settings.effective_redis_url == settings.broker_url
    else:
        servers, _ = parse_url(settings.broker_url)
        assert servers
        assert all(server.startswith("nats://") for server in servers)
        # `clarion api`, `worker` and `scheduler` refuse to start on NATS without it.
        assert settings.redis_url is not None
        assert settings.redis_url.startswith("redis://")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_broker_overlay_changes_the_configuration_only(overlay: str) -> None:
    base = kustomize(KUBERNETES)
    objects = kustomize(KUBERNETES / "overlays" / overlay)
    base_config, config = config_map(base), config_map(objects)
    check_broker(settings_of(config), overlay)
    assert config["data"]["CLARION_METRICS_PORT"] == base_config["data"]["CLARION_METRICS_PORT"]
    # Every role reads the overlay's ConfigMap (its name carries a hash of its content)...
    name = config["metadata"]["name"]
    assert name != base_config["metadata"]["name"]
    workloads = [o for o in objects if o["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 6
    assert all(config_refs(o) == [name] for o in workloads)
    # ...and nothing else differs from the base: the ScaledObject included, since every
    # broker reports clarion_stream_lag per Clarion stream (a stream's shards added up).
    same_name = json.dumps(objects).replace(name, base_config["metadata"]["name"])
    others = [o for o in json.loads(same_name) if o["kind"] != "ConfigMap"]
    assert others == [o for o in base if o["kind"] != "ConfigMap"]


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, as far as these checks need: mappings merged
    key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def compose_services(*files: Path) -> dict[str, Any]:
    """The services of ``files`` as one project: `docker compose config` when the Compose
    plugin is installed (it needs no engine), else parsed and merged here."""
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        args = [docker, "compose", *(a for f in files for a in ("-f", str(f)))]
        env = {**os.environ, "CLARION_SECRET_KEY": "not-a-secret"}
        result = subprocess.run(
            [*args, "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        services: dict[str, Any] = json.loads(result.stdout)["services"]
        return services
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, yaml.safe_load(path.read_text()))
    return dict(merged["services"])


def words(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def hosts(url: str) -> set[str]:
    """The hosts a broker or Redis URL names."""
    if is_cluster_url(url):
        return {host for host, _ in cluster_nodes(url)[1]}
    if url.startswith("nats://"):
        return {str(urlsplit(server).hostname) for server in parse_url(url)[0]}
    return {str(urlsplit(url).hostname)}


@pytest.mark.parametrize("variant", COMPOSE_VARIANTS)
def test_each_compose_variant_gives_every_role_its_broker(variant: str) -> None:
    services = compose_services(DEPLOY / "compose.yaml", DEPLOY / f"compose.{variant}.yaml")
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert set(service.get("depends_on", {})) <= services.keys(), name
    for role in ROLES:
        env = dict(services[role]["environment"])
        env.pop("CLARION_SECRET_KEY")  # ${CLARION_SECRET_KEY:?...}, set when it runs
        settings = settings_of({"data": env})
        check_broker(settings, variant)
        named = hosts(settings.broker_url) | hosts(settings.effective_redis_url or "")
        assert named <= services.keys(), (role, named)
    # The roles start after the one-shot migrate, which waits for the broker.
    migrate = services["migrate"]["depends_on"]
    if variant == "nats":
        assert "-js" in services["nats"]["command"]
        assert migrate["nats"]["condition"] == "service_healthy"
        return
    nodes = {n for n, s in services.items() if "--cluster-enabled" in words(s.get("command"))}
    assert len(nodes) == 6
    create = services["redis-cluster-create"]
    script = words(create["command"])
    assert "--cluster create" in script
    assert "--cluster-replicas 1" in script
    assert all(re.search(rf"\b{node}\b", script) for node in nodes)
    assert set(create["depends_on"]) == nodes
    # `redis` is healthy once the cluster is made, and migrate waits for that.
    assert migrate["redis"]["condition"] == "service_healthy"
    assert "cluster_state:ok" in words(services["redis"]["healthcheck"]["test"])


def test_the_compose_workers_take_every_lane_between_them() -> None:
    """deploy/compose.yaml's workers split the priority lanes (bulk, urgent) and between
    them take every one: a lane no worker takes would wait in the broker."""
    services = compose_services(DEPLOY / "compose.yaml")
    taken: list[str] = []
    for name in ("worker", "worker-urgent"):
        args = cli.build_parser().parse_args(services[name]["command"])
        taken += cli._roles(args).lanes
    assert sorted(taken) == sorted(str(lane) for lane in LANES)
    # Prometheus scrapes each of them.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert {"worker:9100", "worker-urgent:9100"} <= targets


def test_dockerfile_runs_as_non_root_from_a_slim_stage() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2
    assert all(stage.startswith("python:3.11-slim") for stage in stages)
    assert re.search(r"^USER 10001", text, re.M)
    assert "uv sync --frozen --no-dev" in text
