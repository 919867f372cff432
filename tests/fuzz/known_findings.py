"""Findings in code outside this fuzzing work's reach, each with a reproducer under tests/fuzz/findings/<target>/.

The short pass tolerates exactly these signatures (and fails on any other); ``test_fuzz_short.py`` replays each
reproducer as a strict xfail, so the fix of one shows up as a failing XPASS until its entry is removed here.
"""

from __future__ import annotations

KNOWN_FINDINGS: dict[str, dict[str, str]] = {
    "spiffe": {
        "OracleViolation: accepted a non-canonical SPIFFE ID": (
            "policies/spiffe.py accepts a trust domain with a trailing dot (spiffe://cluster.local./...), which "
            "robustness.md §3 forbids; reproducer trust-domain-trailing-dot"
        ),
    },
    "jwks": {
        "AttributeError in jwks.py:_identity": (
            "signer/auth/jwks.py _identity calls .get on kubernetes.io.serviceaccount / .pod without checking they "
            "are objects: a token signed by a pinned key with a string there is INTERNAL, not UNAUTHENTICATED; "
            "reproducer serviceaccount-claim-not-an-object"
        ),
        "UnicodeEncodeError in jwks.py:verify": (
            "signer/auth/jwks.py verify encodes the token as UTF-8 before any check: a str with a lone surrogate "
            "raises (not reachable through gRPC, whose header values are ASCII; reachable through the API); "
            "reproducer token-with-lone-surrogate"
        ),
    },
}
