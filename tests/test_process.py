"""The process id kept for fork checks (:mod:`app.process`)."""

from __future__ import annotations

import contextlib
import os

from app import process
from app.storage.redis import RedisBackend
from tests.backends import redis_url, require_service


def _in_child(check) -> int:
    """Fork; in the child run ``check`` (exit 0 only if it returns True); the child's
    exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        with contextlib.suppress(BaseException):
            code = 0 if check() else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_kept_id_is_the_childs_own_after_a_fork():
    parent = process.pid()
    assert parent == os.getpid()
    assert _in_child(lambda: process.pid() == os.getpid() != parent) == 0
    assert process.pid() == parent


def test_a_forked_worker_makes_its_own_redis_link():
    """A link made before a fork (its sockets the parent's) is not used in the child: it
    makes its own, which works; the parent's still works."""
    require_service("redis", redis_url())
    backend = RedisBackend(redis_url())
    try:
        parent_link = backend.link
        parent_link.client.ping()
        assert backend.link is parent_link  # kept, while in this process

        def child() -> bool:
            link = backend.link
            link.client.ping()
            return link is not parent_link and link.pid == os.getpid()

        assert _in_child(child) == 0
        assert backend.link is parent_link
        parent_link.client.ping()
    finally:
        backend.close()
