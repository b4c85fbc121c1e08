"""Quotas ("budgets"): calls per period per client, per ``/api`` function, per user.

* :mod:`.policy`: the operator's fields (``quota``, ``api_quotas``,
  ``quota_user_choice``) and the UTC windows;
* :mod:`.counting`: atomic reservations in the shared store;
* :mod:`.web`: ``/api``'s side: budgets of a call, ``RateLimit`` fields, the 429,
  the introspection member;
* :mod:`.choice`: the user's lower quota (consent page, grant records, ``/review``).
"""

# Only the policy here: the clients modules import it, and the counting side imports
# what imports them.
from .policy import FIELDS, Quota, QuotaError, QuotaPolicy, parse_policy

__all__ = ["FIELDS", "Quota", "QuotaError", "QuotaPolicy", "parse_policy"]
