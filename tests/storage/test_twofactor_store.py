"""Two-step sign-in factors on every backend: fixed clock, replay, single-use recovery codes."""

from __future__ import annotations

import pyotp

from app.twofactor import TwoFactor
from tests.conftest import race

NOW = 1_800_000_000.0


def factors(backend, secret: str | None = "s" * 32) -> TwoFactor:
    return TwoFactor(backend.table("factors", None), secret, "Test site")


def enrol(fx: TwoFactor, user: str = "alice") -> tuple[str, list[str]]:
    secret = fx.pending(user)
    assert secret
    codes = fx.confirm(user, pyotp.TOTP(secret).at(NOW), now=NOW)
    assert codes is not None
    return secret, codes


def test_enrol_confirms_with_a_first_code_and_seals_the_secret(backend) -> None:
    fx = factors(backend)
    secret = fx.pending("alice")
    assert (
        fx.confirm(
            "alice", "000000" if pyotp.TOTP(secret).at(NOW) != "000000" else "111111", now=NOW
        )
        is None
    )
    assert not fx.enrolled("alice")
    codes = fx.confirm("alice", pyotp.TOTP(secret).at(NOW), now=NOW)
    assert codes is not None and len(codes) == 10 and len(set(codes)) == 10
    assert fx.enrolled("alice")
    stored = str(backend.table("factors", None).get("totp:alice"))
    assert secret not in stored and "sealed" in stored
    assert all(
        code not in str(backend.table("factors", None).list_by_user("alice")) for code in codes
    )


def test_a_used_step_is_refused_and_so_are_older_ones(backend) -> None:
    fx = factors(backend)
    secret, _ = enrol(fx)
    totp = pyotp.TOTP(secret)
    assert not fx.verify("alice", totp.at(NOW), now=NOW)  # the enrolment's own code
    later = NOW + 30
    assert fx.verify("alice", totp.at(later), now=later)
    assert not fx.verify("alice", totp.at(later), now=later + 1)  # replayed
    assert not fx.verify("alice", totp.at(NOW), now=later)  # an older step, still in window
    assert fx.verify("alice", totp.at(later + 30), now=later + 31)
    assert not fx.verify("alice", totp.at(NOW + 300), now=later + 31)  # outside the window


def test_a_code_raced_by_threads_is_accepted_once(backend) -> None:
    fx = factors(backend)
    secret, _ = enrol(fx)
    code = pyotp.TOTP(secret).at(NOW + 60)

    def attempt(go):
        go()
        return fx.verify("alice", code, now=NOW + 60)

    assert sorted(race(8, attempt)) == [False] * 7 + [True]


def test_recovery_code_single_use_under_concurrency(backend) -> None:
    fx = factors(backend)
    _, codes = enrol(fx)

    def attempt(go):
        go()
        return fx.use_recovery_code("alice", codes[0])

    assert sorted(race(8, attempt)) == [False] * 7 + [True]
    assert fx.recovery_left("alice") == 9
    assert fx.use_recovery_code("alice", codes[1].upper().replace("-", " "))
    assert not fx.use_recovery_code("bob", codes[2])  # another user's code
    new = fx.new_recovery_codes("alice")
    assert not fx.use_recovery_code("alice", codes[2])  # regenerated: old ones gone
    assert fx.recovery_left("alice") == 10 and fx.use_recovery_code("alice", new[0])


def test_removal_forgets_secret_and_codes(backend) -> None:
    fx = factors(backend)
    _, codes = enrol(fx)
    fx.remove("alice")
    assert not fx.enrolled("alice") and fx.recovery_left("alice") == 0
    assert not fx.use_recovery_code("alice", codes[0])


def test_another_secret_cannot_open_the_sealed_secret(backend) -> None:
    secret, _ = enrol(factors(backend))
    other = factors(backend, "another secret " * 2)
    assert other.enrolment("alice") is None
    assert not other.verify("alice", pyotp.TOTP(secret).at(NOW + 30), now=NOW + 30)
