"""OpenID Connect on top of the OAuth 2.0 server, one module per job.

* ``keys`` — the signing key ring, kept in storage (``keys`` table) so every worker and
  instance signs with the same key and a restart keeps it.
* the grants, subjects, UserInfo, discovery, consent and logout modules build on it.
"""
