"""A throwaway three-node Redis Cluster on free loopback ports, for the storage suite."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from bench.procs import free_ports


def _wait_ok(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    with redis.Redis(port=port) as client:
        while time.monotonic() < deadline:
            try:
                if client.cluster("info").get("cluster_state") == "ok":
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
    raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok")


@contextmanager
def redis_cluster(folder: Path) -> Iterator[str]:
    """Start three primaries, join them, yield ``redis+cluster://`` URL, stop them."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        raise RuntimeError("redis-server and redis-cli are needed for the cluster tests")
    # Each node's cluster bus is its port + 10000: both must be free.
    ports = free_ports(3, below=65536 - 10000, beside=10000)
    processes = []
    try:
        for port in ports:
            node = folder / str(port)
            node.mkdir(parents=True)
            processes.append(subprocess.Popen(  # noqa: S603 - fixed arguments
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node),
                 "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        for port in ports:
            _wait_ping(port)
        subprocess.run(  # noqa: S603 - fixed arguments
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        _wait_ok(ports[0])
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait_ping(port: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    with redis.Redis(port=port) as client:
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")
