"""``make bench``: bounded loads against ``oauth2-server serve`` on loopback.

Run with ``python -m bench`` (or ``make bench``); see ``bench/README.md``.
"""
