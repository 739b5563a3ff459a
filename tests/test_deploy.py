"""deploy/ is checked with what runs on this machine: every YAML and JSON file parses,
Prometheus's own tool accepts the configuration and the alert rules, kustomize renders the
manifests, and every metric they name is one Clarion exposes (docs/operations.md).
No Docker engine or Kubernetes cluster runs here: the image and the manifests are not run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from servers import _missing

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bclarion_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


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
        yaml.safe_load((DEPLOY / "kubernetes" / "scaledobject.yaml").read_text()),
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


def test_kustomize_renders_probes_and_budgets() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are only parsed")
    rendered = run(kubectl, "kustomize", str(DEPLOY / "kubernetes"))
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = [o["kind"] for o in objects]
    assert kinds.count("Deployment") == 4
    assert kinds.count("PodDisruptionBudget") == 4
    assert "ScaledObject" in kinds
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_dockerfile_runs_as_non_root_from_a_slim_stage() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2
    assert all(stage.startswith("python:3.11-slim") for stage in stages)
    assert re.search(r"^USER 10001", text, re.M)
    assert "uv sync --frozen --no-dev" in text
