"""What a process holds for later (the metrics' buffered counts) written as it ends.

``atexit`` hooks run when a process ends its interpreter: the main process, gunicorn's
workers. granian's workers are ``multiprocessing`` children, which end with
``os._exit`` after their target returns and run multiprocessing's own exit finalizers
instead; :func:`at_exit` registers for both, in the process that calls it (a child
clears the finalizers it inherited when it starts, so call it once the process runs).
"""

from __future__ import annotations

import atexit
import multiprocessing.util
from collections.abc import Callable


def at_exit(flush: Callable[[], None]) -> None:
    """Call ``flush`` as this process ends normally, however it ends (at most twice:
    it must be safe to call again)."""
    atexit.register(flush)
    multiprocessing.util.Finalize(None, flush, exitpriority=10)
