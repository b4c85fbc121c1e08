"""Abuse limits, one module per job.

* :mod:`.counters`: the fixed-window counter engine (batched, shared through Redis);
* :mod:`.delays`: growing delays after failures (sign-in, client authentication);
* :mod:`.config`: the limits of one process, built from the ``limits`` settings;
* :mod:`.web`: the endpoints' side: keys, decorators, ``Retry-After``, ``RateLimit``.
"""

from .config import Limits, build
from .counters import RateLimits
from .delays import Delays
from .web import api_limit, delay_fields, login_limits, token_limits

__all__ = [
    "Delays",
    "Limits",
    "RateLimits",
    "api_limit",
    "build",
    "delay_fields",
    "login_limits",
    "token_limits",
]
