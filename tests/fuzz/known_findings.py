"""Findings in code outside this fuzzing work's reach, each with a reproducer under tests/fuzz/findings/<target>/.

The short pass tolerates exactly these signatures (and fails on any other); ``test_fuzz_short.py`` replays each
reproducer as a strict xfail, so the fix of one shows up as a failing XPASS until its entry is removed here. Fixed
findings keep their reproducers under findings/ as regressions. Empty: the three found so far (a trust domain with a
trailing dot, non-object kubernetes.io claims, a non-ASCII token) are fixed.
"""

from __future__ import annotations

KNOWN_FINDINGS: dict[str, dict[str, str]] = {}
