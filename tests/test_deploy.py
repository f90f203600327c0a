"""deploy/ checked without a container runtime: every manifest parses, every `mlfs` command line in
them is one the CLI accepts, their settings files load, the image installs what scripts/setup.sh
installs, the dashboard shows only metrics serve-stream serves, and no credential is in a file."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from featurestore.cli import build_parser
from featurestore.config import load_settings
from featurestore.stream.metrics import JobHealth, ViewMetrics, prometheus_text
from featurestore.stream.sinks import SinkStatus, StreamStatus
from transforms.events import EventCounts

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def strings(node: Any) -> list[Any]:
    """Every list of strings (a command's arguments) and every string in a parsed document."""
    found: list[Any] = []
    if isinstance(node, dict):
        for value in node.values():
            found += strings(value)
    elif isinstance(node, list):
        if node and all(isinstance(v, str) for v in node):
            found.append(node)
        for value in node:
            found += strings(value)
    elif isinstance(node, str):
        found.append(node)
    return found


def mlfs_commands() -> list[tuple[Path, list[str]]]:
    """Every `mlfs ...` command in the manifests (argument lists and shell lines), and the
    arguments given to mlfs_spark.py (spark-submit's way of running the CLI)."""
    found = []
    for path in MANIFESTS:
        for node in strings(documents(path)):
            args = node if isinstance(node, list) else None
            if args is None and isinstance(node, str) and re.match(r"^mlfs\s", node):
                args = shlex.split(node)
            if not args:
                continue
            if args[0] == "mlfs":
                found.append((path, args[1:]))
            elif "featurestore.cli" in args and "-pym" in args:  # Flink's PythonDriver runs the CLI
                found.append((path, args[args.index("featurestore.cli") + 1 :]))
            elif any(a.endswith("mlfs_spark.py") for a in args):
                at = next(i for i, a in enumerate(args) if a.endswith("mlfs_spark.py"))
                found.append((path, args[at + 1 :]))
        spark_app = [d for d in documents(path) if d.get("kind") == "SparkApplication"]
        for app in spark_app:
            assert app["spec"]["mainApplicationFile"].endswith("/mlfs_spark.py")
            found.append((path, app["spec"]["arguments"]))
    for path in DEPLOY.rglob("*.md"):
        for line in re.findall(r"`(mlfs [^`]+)`", path.read_text()):
            if "..." not in line and " --" in line:  # an invocation, not a command's name
                found.append((path, shlex.split(line)[1:]))
    return found


def test_every_manifest_parses() -> None:
    assert len(MANIFESTS) >= 12
    for path in MANIFESTS:
        assert documents(path), path
    dashboard = json.loads((DEPLOY / "monitoring" / "grafana-dashboard.json").read_text())
    assert dashboard["panels"]
    kinds = {d["kind"] for p in (DEPLOY / "kubernetes").glob("*.yaml") for d in documents(p)}
    assert {"FlinkDeployment", "SparkApplication", "Job", "Deployment", "Service", "ConfigMap"} <= kinds


@pytest.mark.parametrize(
    ("path", "args"), mlfs_commands(), ids=lambda v: v.name if isinstance(v, Path) else ""
)
def test_every_mlfs_command_in_deploy_is_one_the_cli_takes(path: Path, args: list[str]) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit as exit:
        pytest.fail(f"{path.relative_to(ROOT)}: `mlfs {' '.join(args)}` is refused (exit {exit.code})")


def test_the_flink_job_runs_in_application_mode_and_is_supervised_beside_it() -> None:
    (deployment,) = documents(DEPLOY / "kubernetes" / "flink.yaml")
    job = deployment["spec"]["job"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["upgradeMode"] == "savepoint" and "--application" in job["args"]
    import pyflink

    (python_jar,) = (Path(pyflink.__file__).parent / "opt").glob("flink-python-*.jar")
    assert job["jarURI"] == f"local:///opt/flink/opt/{python_jar.name}"  # the installed PyFlink's
    config = deployment["spec"]["flinkConfiguration"]
    assert config["execution.checkpointing.dir"].startswith("file:///repo/")  # the shared volume
    (supervisor, _) = documents(DEPLOY / "kubernetes" / "serve-stream.yaml")
    (container,) = supervisor["spec"]["template"]["spec"]["containers"]
    assert "--attach" in container["args"] and "0.0.0.0" in container["args"]


def test_the_deployed_settings_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's and the compose file's feature_store.yaml load with MLFS's own loader (which
    refuses unknown `mlfs:` keys), credentials filled from the environment."""
    monkeypatch.setenv("MLFS_REDIS", "redis:6379,password=x")
    monkeypatch.setenv("MLFS_REGISTRY_DSN", "postgresql+psycopg://u:p@db:5432/mlfs")
    texts = [(DEPLOY / "compose" / "feature_store.yaml").read_text()]
    (config_map,) = documents(DEPLOY / "kubernetes" / "config.yaml")
    texts.append(config_map["data"]["feature_store.yaml"])
    for i, text in enumerate(texts):
        repo = tmp_path / f"repo{i}"
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(text)
        settings = load_settings(repo)
        assert settings.registry_type == "sql" and settings.online_store["type"] == "redis"
        assert settings.mlfs["flink"]["metrics_port"] == 9464


def test_the_image_installs_what_setup_installs() -> None:
    dockerfile = (DEPLOY / "image" / "Dockerfile").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "FROM python:3.11-" in dockerfile and "openjdk-17-jdk-headless" in dockerfile
    assert "openjdk-17-jdk-headless" in setup
    (torch,) = re.findall(r"torch==[0-9.]+", setup)
    assert f"pip install --no-cache-dir -c constraints.txt {torch}" in dockerfile
    assert "-c constraints.txt ." in dockerfile and "pip check" in dockerfile
    copied = set(re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE))
    assert {"pyproject.toml", "featurestore", "transforms", "registry", "backfill"} <= copied
    packages = re.search(r"include = \[([^\]]+)\]", (ROOT / "pyproject.toml").read_text())
    assert packages and {p.strip(' "*') for p in packages.group(1).split(",")} <= copied
    for path in re.findall(r"^COPY (deploy/\S+|scripts/\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / path).is_file(), path
    entry = (DEPLOY / "image" / "docker-entrypoint.sh").read_text()
    for script in re.findall(r'"\$FLINK_HOME/bin/([a-z]+\.sh)"', entry):
        import pyflink

        assert (Path(pyflink.__file__).parent / "bin" / script).is_file(), script


def test_the_dashboard_and_scrapes_name_only_metrics_serve_stream_serves() -> None:
    status = StreamStatus(
        EventCounts(input=1), SinkStatus(freshness_ms=5.0), max_event_ms=1, source_counts={"s": EventCounts()}
    )
    served = prometheus_text([ViewMetrics("v", status, 0)], JobHealth("RUNNING", consistency={"v": 0.0}))
    names = set(re.findall(r"^(mlfs_[a-z_]+)", served, re.MULTILINE))
    dashboard = (DEPLOY / "monitoring" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"\b(mlfs_[a-z_]+)", dashboard))
    assert used and used <= names, used - names
    assert {
        "mlfs_consistency_mismatch_ratio",
        "mlfs_job_restarts_total",
        "mlfs_watermark_lag_seconds",
    } <= used
    scrape = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())
    targets = [
        t for job in scrape["scrape_configs"] for c in job.get("static_configs", []) for t in c["targets"]
    ]
    assert "serve-stream:9464" in targets


def test_no_credential_is_written_in_a_file() -> None:
    secret_names = re.compile(r"PASSWORD|TOKEN|DSN|SECRET|REDIS", re.IGNORECASE)
    for path in MANIFESTS:
        for doc in documents(path):
            assert doc.get("kind") != "Secret", f"{path}: a Secret's values belong in `kubectl create secret`"
            for env in _env_entries(doc):
                if secret_names.search(str(env.get("name", ""))):
                    assert "value" not in env or "${" in str(env["value"]) or "$(" in str(env["value"]), (
                        f"{path}: {env['name']} is written in the file"
                    )
    compose = documents(DEPLOY / "compose" / "compose.yaml")[0]
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if secret_names.search(key) and key not in ("MLFS_REDIS",):
                assert "${" in str(value), f"compose service {name}: {key} is written in the file"


def _env_entries(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            found += [e for e in node["env"] if isinstance(e, dict)]
        for value in node.values():
            found += _env_entries(value)
    elif isinstance(node, list):
        for value in node:
            found += _env_entries(value)
    return found
