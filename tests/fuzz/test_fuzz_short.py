"""The short fuzz pass of every pytest run (tests/fuzz/README.md, "every CI run"): the committed corpus plus a few
thousand structure-aware mutations per target, seeded, so it is the same run every time. ``make fuzz`` runs the
full pass (≥ 100 000 inputs per target, coverage-guided with atheris)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.fuzz.known_findings import KNOWN_FINDINGS
from tests.fuzz.run import Recorder, atheris_available, corpus_inputs, run
from tests.fuzz.targets import TARGETS, Target

SHORT_INPUTS = {"csr": 3000, "spiffe": 5000, "jwks": 2000, "metadata": 4000, "policy": 800}
FINDINGS_ROOT = Path(__file__).parent / "findings"


def test_every_target_has_a_short_pass_and_seeds():
    assert set(SHORT_INPUTS) == set(TARGETS)
    for name in TARGETS:
        assert any((Path(__file__).parent / "corpus" / name).iterdir()), name


@pytest.mark.parametrize("name", sorted(SHORT_INPUTS))
def test_short_pass_finds_nothing_new(name, tmp_path):
    report = run(name, SHORT_INPUTS[name], engine="plain", seed=20261202, artifacts=tmp_path, slow_ms=1000.0)
    assert report.execs == SHORT_INPUTS[name]
    # both sides are reached: some inputs are accepted (so the oracle checks something) and some refused (so the
    # mutations get past the seeds into input the code must turn down)
    assert 0 < report.refused < report.execs, f"{report.refused} of {report.execs} refused"
    new = [finding for finding in report.distinct_findings if finding not in KNOWN_FINDINGS.get(name, {})]
    assert new == [], f"new findings, reproducers in {tmp_path / name}"


def _reproducers() -> list:
    """Every input a fuzzer ever found (fixed ones stay as regressions; open ones are strict xfails)."""
    cases = []
    for target_dir in sorted(FINDINGS_ROOT.iterdir()):
        known = KNOWN_FINDINGS.get(target_dir.name, {})
        for path in sorted(target_dir.iterdir()):
            reason = next((text for text in known.values() if path.name in text), None)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(target_dir.name, path, marks=marks, id=f"{target_dir.name}-{path.name}"))
    return cases


@pytest.mark.parametrize(("name", "path"), _reproducers())
def test_known_finding_reproducer_is_handled(name, path, tmp_path):
    recorder = Recorder(TARGETS[name](), tmp_path, slow_ms=1000.0)
    recorder(path.read_bytes())
    assert recorder.findings == 0


@pytest.mark.skipif(not atheris_available(), reason="atheris is a dev dependency; the plain engine ran above")
def test_atheris_engine_runs_coverage_guided(tmp_path):
    report = run("metadata", 2000, engine="atheris", seed=1, artifacts=tmp_path, slow_ms=1000.0)
    assert report.execs == 2000
    assert report.coverage.endswith("features") and int(report.coverage.split()[0]) > 0
    assert report.distinct_findings == []


def test_short_pass_reports_a_planted_crash(monkeypatch, tmp_path):
    """The short pass is not blind: a crash that only mutated input reaches (no seed holds a NUL byte) is found."""
    real = TARGETS["spiffe"]

    def planted() -> Target:
        target = real()

        def one_input(data: bytes) -> None:
            if b"\x00" in data:
                raise KeyError("planted")
            target.one_input(data)

        return dataclasses.replace(target, one_input=one_input)

    assert not any(b"\x00" in seed for seed in corpus_inputs("spiffe"))
    monkeypatch.setitem(TARGETS, "spiffe", planted)
    report = run("spiffe", SHORT_INPUTS["spiffe"], engine="plain", seed=20261202, artifacts=tmp_path, slow_ms=1000.0)
    assert any(finding.startswith("KeyError") for finding in report.distinct_findings), report.distinct_findings
