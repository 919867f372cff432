from __future__ import annotations

import json
import os
import time

import pytest

from signer.auth.jwks import JwksAuthenticator
from signer.errors import AuthenticationFailed
from tests.support.tokens import TokenIssuer


@pytest.fixture(scope="module")
def issuers():  # type: ignore[no-untyped-def]
    return TokenIssuer(), TokenIssuer()


def _bump(path) -> None:  # type: ignore[no-untyped-def]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_identity_from_claims(tmp_path, issuers):
    first, _ = issuers
    auth = JwksAuthenticator(first.write_jwks(tmp_path / "jwks.json"), issuer=first.issuer, audiences=("istio-ca",))
    identity = auth.verify(first.token("payments", "api", algorithm="RS256"))
    assert (identity.namespace, identity.service_account, identity.pod_name) == ("payments", "api", "api-pod")


def test_rotation_to_a_new_key_set_stops_old_tokens(tmp_path, issuers):
    first, second = issuers
    path = first.write_jwks(tmp_path / "jwks.json")
    auth = JwksAuthenticator(path, issuer=first.issuer, audiences=("istio-ca",))
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
    auth = JwksAuthenticator(path, issuer=first.issuer, audiences=("istio-ca",))
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    _bump(path)
    assert not auth.reload()
    assert auth.ready and auth.verify(first.token()).namespace == "orders"


def test_cached_token_still_expires(tmp_path, issuers):
    first, _ = issuers
    auth = JwksAuthenticator(first.write_jwks(tmp_path / "jwks.json"), issuer=first.issuer, audiences=("istio-ca",))
    token = first.token(lifetime=60)
    identity = auth.verify(token)
    assert auth.verify(token) == identity
    with pytest.raises(AuthenticationFailed, match="TOKEN_EXPIRED"):
        auth.verify(token, now=time.time() + 3600)


def test_empty_audiences_refused(tmp_path, issuers):
    with pytest.raises(ValueError):
        JwksAuthenticator(issuers[0].write_jwks(tmp_path / "j.json"), issuer="x", audiences=())
