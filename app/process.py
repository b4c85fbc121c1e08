"""This process's id, known without asking the system each time.

Per-process state (a storage link, an HTTP handle, the token cache's thread) is made
again in a forked worker, found by comparing the process id it was made in with the
current one. ``os.getpid()`` is a system call (glibc keeps no copy), and it ran several
times a request (three a client-credentials token); :func:`pid` reads a copy that
``os.register_at_fork`` renews in every child ``os.fork()`` makes (gunicorn's and
granian's workers, ``multiprocessing``'s forks).
"""

from __future__ import annotations

import os

_pid = os.getpid()


def pid() -> int:
    """``os.getpid()``, from the copy kept."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
