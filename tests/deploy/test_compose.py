"""docker-compose.yml: parses, has the three services wired sensibly, and (when available) fits the compose-spec schema.

No Docker engine here. The schema check runs when ``COMPOSE_SPEC_SCHEMA`` names the compose-spec JSON
schema (github.com/compose-spec/compose-spec, ``schema/compose-spec.json``) or it sits at
``tests/deploy/compose-spec.json``; the structural checks always run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(os.environ.get("COMPOSE_SPEC_SCHEMA", Path(__file__).with_name("compose-spec.json")))


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` interpolation with the defaults (no environment)."""
    def sub(m: re.Match) -> str:
        return os.environ.get(m.group(1)) or (m.group(3) or "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}", sub, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def test_parses_with_three_services(compose):
    assert set(compose["services"]) == {"mlflow", "ray-head", "ray-worker"}
    assert "version" not in compose  # obsolete in the compose spec


def test_wiring(compose):
    s = compose["services"]
    assert "mlflow server" in s["mlflow"]["command"] and "--host 0.0.0.0" in s["mlflow"]["command"]
    assert s["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "ray start --head" in s["ray-head"]["command"] and "--block" in s["ray-head"]["command"]
    assert "--address=ray-head:6379" in s["ray-worker"]["command"]
    for name in ("ray-head", "ray-worker"):
        env = s[name]["environment"]
        assert env["RAY_AUTH_MODE"] in ("disabled", "token")  # Ray 2.60: every node must agree
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert "--object-store-memory" in s[name]["command"]
    for name, svc in s.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in s, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in s[dep], f"{dep} needs a healthcheck for {name}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in compose["volumes"], f"named volume {src} is not declared"
        for port in svc.get("ports", []):
            assert re.fullmatch(r"\d+:\d+", port), port


def test_matches_compose_spec_schema(compose):
    if not SCHEMA.is_file():
        pytest.skip(f"compose-spec schema not found at {SCHEMA} (set COMPOSE_SPEC_SCHEMA)")
    import jsonschema

    jsonschema.validate(compose, json.loads(SCHEMA.read_text()))
