"""Joining a Ray cluster: bounded in time, and only where every node runs the driver's code.

:func:`probe_cluster` joins from a child process (a ``ray.init`` whose GCS cannot be reached -
say a head that advertised an address this machine cannot route to - retries for ever, and a
thread stuck in it cannot be stopped), asks every live node which code it imports
(:func:`code_version`: the package version and a digest of its sources) and answers what it
found, or raises :class:`RayUnavailable` with one line that says what is wrong.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from rsc.errors import ConfigError, UserError

__all__ = ["RayUnavailable", "check_ray_address", "code_version", "probe_cluster", "join_for_target"]

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rsc", "costs", "spaces", "search", "tracking")


class RayUnavailable(UserError):
    """The Ray cluster named by ``--ray-address`` cannot be reached or joined, or Ray is not installed."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """This checkout's package version and a digest of its sources: what every Ray node must share."""
    from importlib import metadata

    try:
        version = metadata.version("rscompress")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{version}+{digest.hexdigest()[:12]}"


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast, with the address in the message, when nothing listens at ``host:port``."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"--ray-address {address!r}: expected host:port, ray://host:port or auto") from None
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


# The child process of probe_cluster: join, ask every live node for its code version, print JSON.
_PROBE = """
import json, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from search.cluster import _node_info
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n for n in ray.nodes() if n.get("Alive")]
info = ray.remote(num_cpus=0, max_retries=0)(_node_info)
refs = [info.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes]
print("RSC-PROBE " + json.dumps({"ray": ray.__version__, "resources": ray.cluster_resources(),
                                 "nodes": ray.get(refs, timeout=float(sys.argv[2]))}), flush=True)
"""


def _node_info() -> dict[str, Any]:
    """Run on a node: where it is and which code it imports."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "host": socket.gethostname(), "code": code_version(),
            "python": sys.version.split()[0]}


def probe_cluster(address: str, timeout: float = 60.0) -> dict[str, Any]:
    """Join the cluster at ``address`` from a child process, within ``timeout`` seconds.

    Returns Ray's version, the cluster's resources and each live node's code version. A child
    process because a ``ray.init`` that cannot reach the GCS retries for ever, and a thread stuck
    in it cannot be stopped.

    Raises:
        RayUnavailable: no answer in time, Ray refused the join, or a node runs other code.
    """
    check_ray_address(address)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, address, str(timeout)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RayUnavailable(
            f"cannot join the Ray cluster at {address}: no answer within {timeout:g} s (the address answers, "
            "but its GCS or raylets cannot be reached from here: was the head started with a --node-ip-address "
            "this machine can reach? see --ray-timeout)") from None
    lines = [ln for ln in out.splitlines() if ln.startswith("RSC-PROBE ")]
    if proc.returncode != 0 or not lines:
        raise RayUnavailable(f"cannot join the Ray cluster at {address}: {_last_error(err)}")
    info = json.loads(lines[-1].removeprefix("RSC-PROBE "))
    mine = code_version()
    for node in info["nodes"]:
        if node["code"] != mine:
            raise RayUnavailable(
                f"Ray node {node['host']} ({node['node_id'][:8]}) runs rscompress {node['code']}, this driver "
                f"{mine}: install the same version on every node, or submit with `ray job submit --working-dir .`")
    return info


def _last_error(stderr: str) -> str:
    """The line of a child's stderr that says what went wrong (an exception's message, not Ray's log noise)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.split(":")[0].endswith(("Error", "Exception")):
            return ln
    return lines[-1] if lines else "the probe exited without a word"


def join_for_target(address: str | None, spec: str) -> bool:
    """Connect this process to the Ray cluster at ``address`` for a ``ray:`` latency target.

    Nothing to do when Ray is initialised already (a test's private instance, a Ray job's driver).
    Returns whether this call connected (the caller then shuts Ray down at the end). Call
    :func:`probe_cluster` first: a join that cannot reach the GCS would hang here.

    Raises:
        ConfigError: no ``address`` to join.
        RayUnavailable: Ray refused the join.
    """
    import ray

    if ray.is_initialized():
        return False
    if not address:
        raise ConfigError(f"--target {spec} measures on a Ray node: pass --ray-address of the cluster it joined")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot join Ray at {address}: {_last_error(str(exc))}") from None
    return True
