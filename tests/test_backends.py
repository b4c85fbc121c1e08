"""Each pytest-xdist worker of ``make test`` flushes Redis databases of its own."""

from __future__ import annotations

import pytest

from tests import backends


@pytest.mark.parametrize(("worker", "dbs"), [("gw0", (15, 14, 11)), ("gw1", (10, 9, 6))])
def test_each_worker_has_databases_of_its_own(monkeypatch, worker, dbs):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert tuple(backends.worker_db(db) for db in (15, 14, 11)) == dbs
    assert backends.redis_url() == f"redis://127.0.0.1:6379/{dbs[0]}"


def test_outside_xdist_the_databases_are_as_given(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/7")
    assert backends.worker_db(14) == 14
    assert backends.redis_url() == "redis://127.0.0.1:6379/7"


def test_a_worker_beyond_the_databases_is_told_so(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    with pytest.raises(RuntimeError, match="3 at most"):
        backends.worker_db(14)


def test_free_ports_beside_skips_a_port_whose_partner_is_taken(monkeypatch):
    """A Redis Cluster node needs its port and its bus port (port + 10000) free: a port
    whose bus port is taken is passed over."""
    import socket

    from bench.procs import free_ports

    taken = socket.socket()
    while True:  # a free port whose bus port this test then holds
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            blocked = probe.getsockname()[1]
        if blocked < 65536 - 10000:
            try:
                taken.bind(("127.0.0.1", blocked + 10000))
                break
            except OSError:
                continue
    real = socket.socket.bind
    offered = iter([blocked])  # then the kernel's own picks

    def bind(sock, address):
        host, port = address
        if port == 0:  # the kernel's pick, here chosen by the test
            return real(sock, (host, next(offered, 0)))
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    try:
        found = free_ports(1, below=65536 - 10000, beside=10000)
    finally:
        monkeypatch.undo()
        taken.close()
    assert found != [blocked]
    assert found[0] < 65536 - 10000
