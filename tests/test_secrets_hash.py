"""Secrets at rest: token digests, the original salted SHA-1 and the named hash schemes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from app import secrets_hash as sh

SEED = Path("/work/shared/fixtures/seed-clients.json")
SEED_ENTRIES = {e["client_id"]: e for e in json.loads(SEED.read_text())}


def test_token_digest_is_hex_sha256_of_the_value():
    assert sh.token_digest("abc") == hashlib.sha256(b"abc").hexdigest()
    assert sh.token_digest("abc") != sh.token_digest("abd")


def test_new_secret_is_url_safe_random_and_long_enough():
    values = {sh.new_secret() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)
    assert len(sh.new_secret(16)) == 22


@pytest.mark.parametrize("client_id", ["sp-demo", "test"])
def test_seed_sha1_reproduces_the_original_format(client_id):
    entry = SEED_ENTRIES[client_id]
    assert sh.seed_sha1(client_id, "hunter2", entry["client_salt"]) == entry["client_secret"]


@pytest.mark.parametrize(
    ("client_id", "secret", "ok"),
    [
        ("test", "hunter2", True),
        ("test", "hunter3", False),
        ("test", "", False),
        ("test", "HUNTER2", False),
        ("sp-demo", "hunter2", False),  # the salt and digest belong to "test"
    ],
)
def test_verify_seed_sha1(client_id, secret, ok):
    entry = SEED_ENTRIES["test"]
    stored = entry["client_secret"]
    assert sh.verify_seed_sha1(stored, client_id, secret, entry["client_salt"]) is ok


def test_verify_seed_sha1_accepts_upper_case_hex():
    entry = SEED_ENTRIES["test"]
    stored = entry["client_secret"].upper()
    assert sh.verify_seed_sha1(stored, "test", "hunter2", entry["client_salt"]) is True


def test_random_secret_hash_names_its_scheme_and_verifies():
    stored = sh.hash_random_secret("s3cret")
    assert stored == "sha256$" + hashlib.sha256(b"s3cret").hexdigest()
    assert sh.known_scheme(stored)
    assert sh.verify_secret(stored, "s3cret") is True
    assert sh.verify_secret(stored, "s3cret ") is False


def test_chosen_secret_hash_is_salted_pbkdf2():
    first = sh.hash_chosen_secret("correct horse", iterations=1000)
    second = sh.hash_chosen_secret("correct horse", iterations=1000)
    scheme, iterations, salt, digest = first.split("$")
    assert (scheme, iterations) == ("pbkdf2-sha256", "1000")
    expected = hashlib.pbkdf2_hmac("sha256", b"correct horse", salt.encode(), 1000).hex()
    assert digest == expected
    assert first != second  # a fresh salt each time
    assert sh.known_scheme(first)
    assert sh.verify_secret(first, "correct horse") is True
    assert sh.verify_secret(second, "correct horse") is True
    assert sh.verify_secret(first, "wrong horse") is False


def test_chosen_secret_default_iterations_are_modern():
    assert sh.PBKDF2_ITERATIONS >= 600_000


@pytest.mark.parametrize(
    "stored",
    ["", "plain", "md5$abc", "sha1$" + "0" * 40, "seed-sha1$abc", "SHA256$abc"],
)
def test_unknown_schemes_are_not_known_and_never_verify(stored):
    assert sh.known_scheme(stored) is False
    assert sh.verify_secret(stored, "anything") is False


@pytest.mark.parametrize(
    "stored",
    [
        "pbkdf2-sha256$",
        "pbkdf2-sha256$1000",
        "pbkdf2-sha256$1000$salt",
        "pbkdf2-sha256$many$salt$abcd",
        "pbkdf2-sha256$0$salt$abcd",
    ],
)
def test_malformed_stored_hash_verifies_false_instead_of_raising(stored):
    # A damaged clients-file entry must fail authentication, not crash /token with a 500.
    assert sh.verify_secret(stored, "anything") is False
