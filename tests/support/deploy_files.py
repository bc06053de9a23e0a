"""The deployment files (deploy/) as the tests read them: compose's router, the dashboard's
and the alerts' PromQL and the metric names it selects; and the tools that check them."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from vllm_router.launch_router import parse_router_args
from vllm_router.router_args import RouterArgs

from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "af3-serve.json"
# vLLM's router: the compose service (profile `scale`).
ROUTER_SERVICE = "router"


def tool(name: str, install: str) -> str:
    """A command from the venv or PATH; missing means the project's install steps failed."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(f"{name} is missing: {install}")
    return found


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def router_args(command: list[str]) -> RouterArgs:
    """A command line as vllm-router reads it (its own parser): a misspelt flag fails."""
    return parse_router_args([str(word) for word in command])


def compose_router() -> tuple[dict, RouterArgs]:
    service = load_yaml(DEPLOY / "docker-compose.yml")["services"][ROUTER_SERVICE]
    return service, router_args(service["command"])


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_exprs() -> list[str]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


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
