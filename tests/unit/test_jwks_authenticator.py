from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from signer.auth.jwks import LEEWAY_SECONDS, JwksAuthenticator
from signer.errors import AuthenticationFailed
from tests.support.clock import ManualClock
from tests.support.tokens import TokenIssuer
from tests.support.waiting import until_true


@pytest.fixture(scope="module")
def issuers() -> tuple[TokenIssuer, TokenIssuer]:
    return TokenIssuer(), TokenIssuer()


def _clock() -> ManualClock:
    """Starting now: the test issuers mint tokens on the real clock."""
    return ManualClock(start=datetime.now(UTC))


def _bump(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_identity_from_claims(tmp_path, issuers):
    first, _ = issuers
    auth = JwksAuthenticator(
        first.write_jwks(tmp_path / "jwks.json"), issuer=first.issuer, audiences=("istio-ca",), clock=_clock()
    )
    identity = auth.verify(first.token("payments", "api", algorithm="RS256"))
    assert (identity.namespace, identity.service_account, identity.pod_name) == ("payments", "api", "api-pod")


def test_rotation_to_a_new_key_set_stops_old_tokens(tmp_path, issuers):
    first, second = issuers
    path = first.write_jwks(tmp_path / "jwks.json")
    auth = JwksAuthenticator(path, issuer=first.issuer, audiences=("istio-ca",), clock=_clock())
    old = first.token()
    auth.verify(old)  # now cached
    second.write_jwks(path)
    _bump(path)
    assert auth.reload()
    with pytest.raises(AuthenticationFailed):
        auth.verify(old)
    assert auth.verify(second.token()).service_account == "web"


def test_bad_new_file_keeps_the_last_good_keys(tmp_path, issuers):
    first, _ = issuers
    path = first.write_jwks(tmp_path / "jwks.json")
    auth = JwksAuthenticator(path, issuer=first.issuer, audiences=("istio-ca",), clock=_clock())
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    _bump(path)
    assert not auth.reload()
    assert auth.ready and auth.verify(first.token()).namespace == "orders"


async def test_cached_token_still_expires(tmp_path, issuers):
    first, _ = issuers
    token = first.token(lifetime=60)
    # from the second the token was issued in (not "now", which may already be the next second under load)
    clock = ManualClock(
        start=datetime.fromtimestamp(jwt.decode(token, options={"verify_signature": False})["iat"], UTC)
    )
    auth = JwksAuthenticator(
        first.write_jwks(tmp_path / "jwks.json"), issuer=first.issuer, audiences=("istio-ca",), clock=clock
    )
    identity = auth.verify(token)
    await clock.advance(60 + LEEWAY_SECONDS - 1)
    assert auth.verify(token) == identity  # still within its life (and the clock-skew leeway)
    await clock.advance(1)
    with pytest.raises(AuthenticationFailed, match="TOKEN_EXPIRED"):
        auth.verify(token)


async def test_a_token_from_the_future_is_not_yet_valid(tmp_path, issuers):
    first, _ = issuers
    clock = ManualClock(start=datetime.fromtimestamp(0, UTC))  # long before the token was minted
    auth = JwksAuthenticator(
        first.write_jwks(tmp_path / "jwks.json"), issuer=first.issuer, audiences=("istio-ca",), clock=clock
    )
    with pytest.raises(AuthenticationFailed, match="TOKEN_NOT_YET_VALID"):
        auth.verify(first.token())


async def test_the_watch_picks_up_a_new_key_set_on_the_clock(tmp_path, issuers):
    first, second = issuers
    clock = _clock()
    path = first.write_jwks(tmp_path / "jwks.json")
    auth = JwksAuthenticator(path, issuer=first.issuer, audiences=("istio-ca",), clock=clock)
    stop = asyncio.Event()
    watch = asyncio.create_task(auth.watch(stop, interval=5))
    await until_true(lambda: clock.sleeper_count == 1, "the watch waiting for its next check")
    second.write_jwks(path)
    _bump(path)
    await clock.advance(5)
    await until_true(lambda: clock.sleeper_count == 1, "the watch checked and waits again")
    assert auth.verify(second.token()).service_account == "web"
    stop.set()
    await watch


def test_empty_audiences_refused(tmp_path, issuers):
    with pytest.raises(ValueError):
        JwksAuthenticator(issuers[0].write_jwks(tmp_path / "j.json"), issuer="x", audiences=(), clock=_clock())
