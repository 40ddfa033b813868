"""docker-compose.yml: the production stack (Postgres + MinIO + MLflow, Ray head + scalable workers, submit).

No Docker engine is needed: the file is interpolated like compose does (``${VAR}``, ``${VAR:-default}``,
``${VAR:?message}``, ``$$``; required credentials taken from ``.env.example``), validated against the
compose-spec JSON schema (``tests/deploy/compose-spec.json``, or ``$COMPOSE_SPEC_SCHEMA``), and its
wiring checked against the code, the Dockerfile, ``.env.example`` and docs/scale-out.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCS = ROOT / "docs" / "scale-out.md"
SCHEMA = Path(os.environ.get("COMPOSE_SPEC_SCHEMA", Path(__file__).with_name("compose-spec.json")))

SERVICES = {"postgres", "minio", "create-bucket", "mlflow", "ray-head", "ray-worker", "submit"}
RAY_SERVICES = ("ray-head", "ray-worker", "submit")
# Variables that hold credentials: never a default in the compose file, always set in .env.
CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_USER$|_DB$")
# Environment variables the code reads that the containers need not set, and why.
PROVIDED_ELSEWHERE = {
    "MLFLOW_LOGGING_LEVEL": "defaulted by rsc.cli.quiet_third_party",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "defaulted by rsc.cli.quiet_third_party",
    "CUBLAS_WORKSPACE_CONFIG": "defaulted by rsc.loop",
    "RAY_ADDRESS": "set by Ray for a job's driver (ray job submit)",
    "CI": "test-suite only",
    "OMP_NUM_THREADS": "trials set torch's threads themselves",
    "PYTHONPATH": "extended for a private local Ray instance; ray job --working-dir sets it on the cluster",
    "PATH": "the image's",
    "HOME": "the image's",
}


# -- compose interpolation --------------------------------------------------------------------------

class InterpolationError(ValueError):
    """A required variable (``${VAR:?message}`` / ``${VAR?message}``) has no value, or bad syntax."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _braced_end(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` whose ``{`` is at ``start - 1`` (nested ``${...}`` allowed)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unterminated ${{ in {text!r}")


def references(text: str) -> Iterator[tuple[str, str, str]]:
    """``(name, operator, argument)`` of each variable reference in ``text`` (``$$`` is an escape);
    the operator is one of ``""``, ``:-``, ``-``, ``:?``, ``?``, ``:+``, ``+``. Nested references
    in arguments are yielded too."""
    i = 0
    while (i := text.find("$", i)) != -1:
        if text.startswith("$$", i):
            i += 2
        elif text.startswith("${", i):
            end = _braced_end(text, i + 2)
            body = text[i + 2:end]
            m = _NAME.match(body)
            if not m:
                raise InterpolationError(f"invalid variable reference ${{{body}}}")
            rest = body[m.end():]
            op = next((o for o in (":-", ":?", ":+", "-", "?", "+") if rest.startswith(o)), "")
            if rest and not op:
                raise InterpolationError(f"invalid variable reference ${{{body}}}")
            yield m.group(), op, rest[len(op):]
            yield from references(rest[len(op):])
            i = end + 1
        elif m := _NAME.match(text, i + 1):
            yield m.group(), "", ""
            i = m.end()
        else:
            i += 1


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string: ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset or empty),
    ``${VAR-default}`` (unset), ``${VAR:?message}`` / ``${VAR?message}`` (required), ``${VAR:+alt}``,
    ``$$`` (a literal ``$``). An unset ``${VAR}`` is the empty string, as compose does (with a warning)."""
    out, i = [], 0
    while (j := text.find("$", i)) != -1:
        out.append(text[i:j])
        if text.startswith("$$", j):
            out.append("$")
            i = j + 2
        elif text.startswith("${", j):
            end = _braced_end(text, j + 2)
            body = text[j + 2:end]
            name, op, arg = next(references("${" + body + "}"))
            value, is_set = env.get(name), name in env
            if op in (":-", "-"):
                use_default = not value if op == ":-" else not is_set
                out.append(interpolate(arg, env) if use_default else value)
            elif op in (":?", "?"):
                if (not value) if op == ":?" else (not is_set):
                    raise InterpolationError(f"required variable {name} is missing a value: "
                                             f"{interpolate(arg, env) or name}")
                out.append(value)
            elif op in (":+", "+"):
                out.append(interpolate(arg, env) if (value if op == ":+" else is_set) else "")
            else:
                out.append(value or "")
            i = end + 1
        elif m := _NAME.match(text, j + 1):
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            out.append("$")
            i = j + 1
    out.append(text[i:])
    return "".join(out)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value of a parsed compose file (keys are left alone, as compose does)."""
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``(set, documented)`` of a dotenv file: ``KEY=VALUE`` lines, and commented-out ``# KEY=VALUE`` lines."""
    active, commented = {}, {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"\s*([A-Z][A-Z0-9_]*)=(.*)", line):
            active[m.group(1)] = m.group(2).strip().strip("'\"")
        elif m := re.fullmatch(r"\s*#\s*([A-Z][A-Z0-9_]*)=(\S*)\s*", line):
            commented[m.group(1)] = m.group(2)
    return active, commented


# -- fixtures and helpers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)[0]


@pytest.fixture(scope="module")
def compose(raw, env_example) -> dict:
    """The file as compose sees it with .env copied from .env.example (no other environment)."""
    return interpolate_tree(raw, env_example)


def required_vars(raw: dict) -> set[str]:
    return {name for s in strings(raw) for name, op, _ in references(s) if op in (":?", "?")}


def argv(command: str | list[str]) -> list[str]:
    """A service command as compose runs it: a string is split like a shell would."""
    return shlex.split(command) if isinstance(command, str) else list(command)


def flag(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--name value`` or ``--name=value``), or None."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def host_port(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"(?:[a-z0-9+]+://)?(?:[^@/]*@)?([A-Za-z0-9._-]+):(\d+)(?:/.*)?", url)
    assert m, f"no host:port in {url!r}"
    return m.group(1), int(m.group(2))


def size_bytes(text: str | int) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(text).lower())
    assert m, f"not a size: {text!r}"
    return int(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " ")


def mounts(svc: dict) -> dict[str, str]:
    """Container path -> source of a service's short-syntax volumes."""
    out = {}
    for v in svc.get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def mounted(svc: dict, path: str) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in mounts(svc))


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^\s*FROM\s+\S+\s+AS\s+([A-Za-z0-9._-]+)\s*$", DOCKERFILE.read_text(),
                          flags=re.M | re.I))


def dockerfile_stage(name: str) -> str:
    """The text of build stage ``name`` (its FROM line up to the next FROM)."""
    stages = re.split(r"^(?=\s*FROM\s)", DOCKERFILE.read_text(), flags=re.M | re.I)
    found = [s for s in stages if re.match(rf"\s*FROM\s+\S+\s+AS\s+{re.escape(name)}\s*$", s.splitlines()[0], re.I)]
    assert found, f"no stage {name} in the Dockerfile"
    return found[0]


# -- the interpolation helper itself (and the bad input) --------------------------------------------

def test_interpolation_forms():
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A} $A ${A:-x} ${A-x} ${A:?m} ${A:+y}", env) == "a a a a a y"
    assert interpolate("${NOPE:-x} ${EMPTY:-x} ${EMPTY-x} ${NOPE-x} ${NOPE} ${NOPE:+y}", env) == "x x  x  "
    assert interpolate("${NOPE:-${A}}-$${A}-$$A-5%$", env) == "a-${A}-$A-5%$"
    assert interpolate("${EMPTY?ok when set}", env) == ""


def test_missing_required_variable_fails_with_a_clear_message():
    bad = "services:\n  db:\n    environment:\n      PW: ${DB_PASSWORD:?set DB_PASSWORD in .env}\n"
    with pytest.raises(InterpolationError, match=r"required variable DB_PASSWORD is missing a value: "
                                                 r"set DB_PASSWORD in \.env"):
        interpolate_tree(yaml.safe_load(bad), {})
    with pytest.raises(InterpolationError, match="DB_PASSWORD"):
        interpolate_tree(yaml.safe_load(bad), {"DB_PASSWORD": ""})  # ':?' rejects empty too
    with pytest.raises(InterpolationError, match="unterminated"):
        interpolate("${OOPS", {})


def test_the_stack_refuses_to_start_without_each_credential(raw, env_example):
    for name in sorted(required_vars(raw)):
        env = {k: v for k, v in env_example.items() if k != name}
        with pytest.raises(InterpolationError, match=rf"required variable {name} is missing a value: .*\.env"):
            interpolate_tree(raw, env)


# -- the file as a whole ------------------------------------------------------------------------------

def test_services_and_no_obsolete_version(compose):
    assert set(compose["services"]) == SERVICES
    assert "version" not in compose  # obsolete in the compose spec


def test_matches_compose_spec_schema(compose):
    if not SCHEMA.is_file():
        pytest.skip(f"compose-spec schema not found at {SCHEMA} (set COMPOSE_SPEC_SCHEMA)")
    import jsonschema

    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_depends_on_targets_exist_and_are_ready_when_waited_for(compose):
    s = compose["services"]
    for name, svc in s.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in s, f"{name} depends on unknown service {dep}"
            assert s[dep].get("profiles") is None, f"{name} depends on {dep}, which only runs in a profile"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in s[dep], f"{dep} needs a healthcheck for {name}"
            elif cond["condition"] == "service_completed_successfully":
                assert s[dep].get("restart", "no") == "no", f"one-shot {dep} must not restart"


def test_healthchecks(compose):
    s = compose["services"]
    test = {name: " ".join(argv(s[name]["healthcheck"]["test"])) for name in ("postgres", "minio", "mlflow", "ray-head")}
    assert "pg_isready" in test["postgres"]
    assert "mc ready local" in test["minio"]
    port = int(flag(argv(s["mlflow"]["command"]), "--port"))
    assert f"127.0.0.1:{port}/health" in test["mlflow"]
    dashboard = int(flag(argv(s["ray-head"]["command"]), "--dashboard-port"))
    assert f"127.0.0.1:{dashboard}/api/gcs_healthz" in test["ray-head"]


def test_named_volumes_are_declared(compose):
    for name, svc in compose["services"].items():
        for src in mounts(svc).values():
            if not src.startswith((".", "/", "~")):
                assert src in compose["volumes"], f"{name}: named volume {src} is not declared"


# -- MLflow on Postgres + MinIO ------------------------------------------------------------------------

def test_mlflow_stores_runs_in_postgres_and_serves_artifacts_from_minio(compose, env_example):
    s = compose["services"]
    mlflow = s["mlflow"]
    args, env = argv(mlflow["command"]), mlflow["environment"]
    assert args[:2] == ["mlflow", "server"] and flag(args, "--host") == "0.0.0.0"
    backend = flag(args, "--backend-store-uri") or env["MLFLOW_BACKEND_STORE_URI"]
    pg = s["postgres"]["environment"]
    assert backend == (f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
                       f"{pg['POSTGRES_DB']}")
    assert pg["POSTGRES_PASSWORD"] == env_example["POSTGRES_PASSWORD"]
    assert "--serve-artifacts" in args
    dest = flag(args, "--artifacts-destination")
    bucket = s["create-bucket"]["environment"]["MLFLOW_BUCKET"]
    assert re.fullmatch(rf"s3://{re.escape(bucket)}(/.*)?", dest), dest
    minio_port = int(flag(argv(s["minio"]["command"]), "--address").rsplit(":", 1)[1])
    for name in ("mlflow", "create-bucket"):
        e = s[name]["environment"]
        assert host_port(e["MLFLOW_S3_ENDPOINT_URL"]) == ("minio", minio_port), name
        assert e["AWS_ACCESS_KEY_ID"] == s["minio"]["environment"]["MINIO_ROOT_USER"], name
        assert e["AWS_SECRET_ACCESS_KEY"] == s["minio"]["environment"]["MINIO_ROOT_PASSWORD"], name
    assert mlflow["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert s["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_images_are_built_from_the_repo_dockerfile(compose):
    targets = dockerfile_targets()
    s = compose["services"]
    assert s["mlflow"]["build"]["target"] == "mlflow" and s["ray-head"]["build"]["target"] == "ray"
    by_image: dict[str, dict] = {}
    for name, svc in s.items():
        build = svc.get("build")
        if build is None:
            continue
        assert (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file(), name
        assert build["target"] in targets, f"{name}: build target {build['target']} is not a FROM ... AS in the Dockerfile"
        # services sharing an image tag must build the same thing, or the last build wins
        assert by_image.setdefault(svc["image"], build) == build, f"{name}: {svc['image']} built two ways"
    mlflow_stage, ray_stage = dockerfile_stage("mlflow"), dockerfile_stage("ray")
    assert "psycopg2" in mlflow_stage and "boto3" in mlflow_stage
    assert "ray[default]" in ray_stage  # `ray job submit` needs the dashboard's job server
    assert re.search(r"pip install .*-e \.", ray_stage), "the ray image installs the project"
    assert not re.search(r"^\s*FROM\s+\S*mlflow", DOCKERFILE.read_text(), re.M | re.I), "no third-party mlflow image"


def test_dockerignore_keeps_secrets_and_data_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", "data", "runs"} <= ignored


# -- Ray ----------------------------------------------------------------------------------------------

def test_ray_nodes_and_clients_agree(compose):
    s = compose["services"]
    head_args = argv(s["ray-head"]["command"])
    assert head_args[:3] == ["ray", "start", "--head"] and "--block" in head_args
    assert flag(head_args, "--dashboard-host") == "0.0.0.0"
    gcs_port, dashboard_port = int(flag(head_args, "--port")), int(flag(head_args, "--dashboard-port"))
    worker_args = argv(s["ray-worker"]["command"])
    assert worker_args[:2] == ["ray", "start"] and "--block" in worker_args and "--head" not in worker_args
    assert host_port(flag(worker_args, "--address")) == ("ray-head", gcs_port)
    submit_args = argv(s["submit"]["command"])
    assert submit_args[:3] == ["ray", "job", "submit"]
    assert host_port(flag(submit_args, "--address")) == ("ray-head", dashboard_port)
    assert any(p.endswith(f":{dashboard_port}") for p in s["ray-head"]["ports"]), "dashboard/job endpoint published"
    # Ray 2.60 token auth: one mode and one token for every node and client
    modes = {s[n]["environment"]["RAY_AUTH_MODE"] for n in RAY_SERVICES}
    assert len(modes) == 1 and modes <= {"token", "disabled"}, modes
    if modes == {"token"}:
        tokens = {s[n]["environment"].get("RAY_AUTH_TOKEN") for n in RAY_SERVICES}
        assert len(tokens) == 1 and None not in tokens and "" not in tokens
    for name in ("ray-head", "ray-worker"):
        store = int(flag(argv(s[name]["command"]), "--object-store-memory"))
        assert 0 < store < size_bytes(s[name]["shm_size"]), f"{name}: object store must fit in shm_size"


def test_mlflow_url_of_the_ray_services_is_the_mlflow_service(compose):
    s = compose["services"]
    mlflow_port = int(flag(argv(s["mlflow"]["command"]), "--port"))
    allowed = s["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name in RAY_SERVICES:
        uri = s[name]["environment"]["MLFLOW_TRACKING_URI"]
        assert uri.startswith("http://") and host_port(uri) == ("mlflow", mlflow_port), f"{name}: {uri}"
        assert f"mlflow:{mlflow_port}" in allowed, "MLflow 3 would answer the Ray nodes 403 (Host header)"
    driver = argv(s["submit"]["command"])
    driver = driver[driver.index("--") + 1:]
    assert host_port(flag(driver, "--tracking-uri")) == ("mlflow", mlflow_port)


def test_submit_runs_a_ray_search_on_the_head(compose):
    s = compose["services"]
    assert s["submit"]["profiles"] == ["submit"]
    args = argv(s["submit"]["command"])
    assert flag(args, "--working-dir") == "/app"
    driver = args[args.index("--") + 1:]
    assert driver[:3] == ["python", "-m", "search.run"]
    assert flag(driver, "--backend") == "ray" and flag(driver, "--ray-address") == "auto"
    head = s["ray-head"]
    assert mounted(head, flag(driver, "--data")), "--data must be a path mounted on the head"
    assert mounts(head)["/data"].startswith((".", "/")) and head["volumes"][0].endswith(":ro")
    assert mounted(head, flag(driver, "--out")) and not flag(driver, "--out").startswith("/data")


def test_search_args_are_passed_through_with_shell_quoting(raw, env_example):
    env = {**env_example, "SEARCH_ARGS": "--budget 'params<25%' --trials 40"}
    args = argv(interpolate_tree(raw, env)["services"]["submit"]["command"])
    assert args[-4:] == ["--budget", "params<25%", "--trials", "40"]


def test_ray_worker_is_scalable_and_needs_no_shared_disk(compose):
    w = compose["services"]["ray-worker"]
    for key in ("container_name", "hostname", "ports", "volumes", "networks", "mac_address"):
        assert key not in w, f"ray-worker: {key} breaks --scale ray-worker=N (or needs shared disk)"
    assert "replicas" not in (w.get("deploy") or {}), "scale with --scale ray-worker=N"
    assert w["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_env_vars_the_code_reads_are_wired(compose):
    """Every environment variable the packages read is set on the Ray nodes (or provided otherwise)."""
    reads = set()
    pattern = re.compile(r"""(?:os\.environ\.get|os\.getenv|environ\.get)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                         r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\](?!\s*=[^=])"""
                         r"""|["']([A-Z][A-Z0-9_]*)["']\s+(?:not\s+)?in\s+os\.environ""")
    for pkg in ("rsc", "costs", "spaces", "search", "tracking"):
        for path in (ROOT / pkg).rglob("*.py"):
            reads |= {next(g for g in m.groups() if g) for m in pattern.finditer(path.read_text())}
    assert "RSC_CACHE_DIR" in reads  # the scan works
    s = compose["services"]
    for name in ("ray-head", "ray-worker"):
        env = s[name]["environment"]
        missing = sorted(v for v in reads if v not in env and v not in PROVIDED_ELSEWHERE)
        assert not missing, (f"{name}: the code reads {missing}: set them in x-ray-env of docker-compose.yml "
                             "or list them in PROVIDED_ELSEWHERE with the reason")
        stale = sorted(v for v in env if v.startswith("RSC_") and v not in reads)
        assert not stale, f"{name}: {stale} set but no code reads them"
        # where the cache lives is writable: a volume on the head, the container's own disk on workers
        assert env["RSC_CACHE_DIR"] == "/cache"
    assert mounted(s["ray-head"], "/cache")


# -- ports and secrets ---------------------------------------------------------------------------------

def test_published_ports_are_bound_to_loopback_by_default(raw, env_example):
    required_only = {k: env_example[k] for k in required_vars(raw)}
    s = interpolate_tree(raw, required_only)["services"]
    published = {name: svc["ports"] for name, svc in s.items() if svc.get("ports")}
    assert set(published) == {"minio", "mlflow", "ray-head"}
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: {port}"
    for port in (p for svc in raw["services"].values() for p in svc.get("ports", [])):
        assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port  # one switch for all of them


def test_no_credential_has_a_literal_default(raw):
    text = COMPOSE.read_text()
    for s in strings(raw):
        for name, op, _ in references(s):
            if CREDENTIAL.search(name):
                assert op == ":?", f"${{{name}}} must be required (${{{name}:?...}}), not {op or 'optional'}"
    envs = [svc.get("environment") or {} for svc in raw["services"].values()]
    envs += [v for k, v in raw.items() if k.startswith("x-") and isinstance(v, dict) and "RAY_AUTH_TOKEN" in v]
    for env in envs:
        assert isinstance(env, dict), "environment as a mapping, so that it can be checked"
        for key, value in env.items():
            if CREDENTIAL.search(key) or "://" in str(value):
                literal = re.sub(r"\$\{[^}]*\}", "", str(value))
                if CREDENTIAL.search(key):
                    assert literal == "", f"{key} has a literal part {literal!r}"
                else:  # a URL with credentials takes them from variables only
                    assert "@" not in literal or re.search(r"://\$\{[^}]*\}:\$\{[^}]*\}@", str(value)), key
    placeholders = [v for k, v in read_env_file(ENV_EXAMPLE)[0].items() if CREDENTIAL.search(k) and len(v) > 6]
    for word in ["minioadmin", *placeholders]:  # no well-known or example secret pasted in
        assert word not in text, word


def test_env_example_documents_every_variable(raw):
    active, commented = read_env_file(ENV_EXAMPLE)
    refs = [r for s in strings(raw) for r in references(s)]
    required = {n for n, op, _ in refs if op in (":?", "?")}
    referenced = {n for n, _, _ in refs}
    assert required <= set(active), f"required but not in .env.example: {sorted(required - set(active))}"
    assert referenced <= set(active) | set(commented), \
        f"undocumented in .env.example: {sorted(referenced - set(active) - set(commented))}"
    assert set(active) | set(commented) <= referenced, \
        f".env.example lists unused {sorted((set(active) | set(commented)) - referenced)}"
    defaults: dict[str, set[str]] = {}
    for n, op, arg in refs:
        if op == ":-":
            defaults.setdefault(n, set()).add(arg)
    for n, values in defaults.items():
        assert len(values) == 1, f"{n} has different defaults: {values}"
        assert commented.get(n, active.get(n)) == values.pop(), f".env.example shows another default for {n}"
    for n in required:
        if re.search(r"PASSWORD|TOKEN|SECRET", n):
            assert active[n].startswith("change-me"), f"{n}: .env.example holds a placeholder, not a secret"


# -- the user recipe ------------------------------------------------------------------------------------

def test_recipe_matches_the_stack(compose):
    text = DOCS.read_text()
    s = compose["services"]
    assert "cp .env.example .env" in text
    assert "docker compose up -d --build --scale ray-worker=" in text
    assert "docker compose run --rm submit" in text
    assert "docker compose down" in text
    host = re.search(r"ray job submit --address (\S+) --working-dir \. --.*?(?=\n\s*\n|```)", text, re.S)
    assert host, "the host command `ray job submit --address ... --working-dir . -- ...` is documented"
    cmd = host.group(0).replace("\\\n", " ")
    assert host_port(host.group(1)) == ("127.0.0.1", 8265)
    assert "--tracking-uri http://mlflow:5000" in cmd and "--backend ray" in cmd and "--ray-address auto" in cmd
    assert "--data /data/" in cmd and "--out /runs" in cmd
    assert "http://127.0.0.1:5000" in text and "http://127.0.0.1:8265" in text
    assert "tags.pareto = 'true'" in text and "rsc-search" in text
    assert "RAY_AUTH_TOKEN" in text
