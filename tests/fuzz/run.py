"""Runs a fuzz target and reports executions, coverage, findings and time.

    python -m tests.fuzz.run --target csr --inputs 100000            # atheris (libFuzzer), coverage-guided
    python -m tests.fuzz.run --target all --inputs 3000 --engine plain  # no atheris: seeded structure-aware

Engines:
- ``atheris``: libFuzzer with atheris' bytecode coverage of ``signer``/``policies``/``proto`` and the target's
  structure-aware custom mutator; runs in a child process (libFuzzer exits the process when done), starting from
  the committed corpus (read-only) plus a scratch directory for what it discovers.
- ``plain``: replays the corpus, then mutates it with the same structure-aware mutator and a seeded RNG;
  deterministic for a given seed, no coverage feedback.

The exit status is 1 when a finding is not in ``known_findings.py``.

A finding is any exception outside the target's allowed refusal types, or an oracle violation. Findings do not
stop the run: each distinct one (exception type + innermost frame) is saved once under ``--artifacts`` with its
traceback, and every occurrence is counted. Inputs slower than ``--slow-ms`` are counted (tests/fuzz/README.md:
parsers p99 ≤ 10 ms, max ≤ 100 ms).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fuzz.known_findings import KNOWN_FINDINGS
from tests.fuzz.targets import CORPUS_ROOT, DICT_ROOT, INSTRUMENTED, TARGETS, Mutate, OracleViolation, Target

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACTS = REPO_ROOT / ".state" / "fuzz"
MAX_INPUT_BYTES = 65536


@dataclass
class Report:
    target: str
    engine: str
    execs: int = 0
    findings: int = 0  # inputs that produced a finding
    refused: int = 0  # inputs the code under test refused with an allowed error (the rest were accepted)
    distinct_findings: list[str] = field(default_factory=list)
    slow_inputs: int = 0
    max_ms: float = 0.0
    coverage: str = "n/a"
    seconds: float = 0.0

    @property
    def per_100k_seconds(self) -> float:
        return self.seconds * 100_000 / self.execs if self.execs else 0.0


class Recorder:
    """Wraps a target's one_input: allowed refusals pass, anything else is written down and the run goes on."""

    def __init__(self, target: Target, artifacts: Path, slow_ms: float, expected: int = 0) -> None:
        self.target = target
        self.expected = expected
        self.artifacts = artifacts
        self.slow_ms = slow_ms
        self.execs = 0
        self.findings = 0
        self.refused = 0
        self.slow_inputs = 0
        self.max_ms = 0.0
        self.slowest = b""
        self.seen: set[str] = set()
        artifacts.mkdir(parents=True, exist_ok=True)
        self._log = (artifacts / "findings.log").open("a")

    def __call__(self, data: bytes) -> None:
        self.execs += 1
        started = time.perf_counter()
        try:
            self.target.one_input(data)
        except self.target.allowed:
            self.refused += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:
            self._record(data, error)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms > self.max_ms:
            self.max_ms = elapsed_ms
            self.slowest = data
        if elapsed_ms > self.slow_ms:
            self.slow_inputs += 1
        if self.execs % 1024 == 0 or self.execs == self.expected:
            self.write_summary()  # libFuzzer ends the process with exit(): no chance to write it afterwards

    def write_summary(self) -> None:
        summary = {"execs": self.execs, "refused": self.refused, "slow_inputs": self.slow_inputs, "max_ms": self.max_ms}
        (self.artifacts / "summary.json").write_text(json.dumps(summary))
        (self.artifacts / "slowest.bin").write_bytes(self.slowest)  # to re-time alone: load can make any input slow

    def _record(self, data: bytes, error: BaseException) -> None:
        self.findings += 1
        signature = finding_signature(error)
        self._log.write(signature + "\n")
        self._log.flush()
        if signature in self.seen:
            return
        self.seen.add(signature)
        name = hashlib.sha256(signature.encode()).hexdigest()[:12]
        (self.artifacts / f"finding-{name}.bin").write_bytes(data)
        text = "".join(traceback.format_exception(error))
        (self.artifacts / f"finding-{name}.txt").write_text(f"{signature}\n\n{text}")


def finding_signature(error: BaseException) -> str:
    """Groups findings: the oracle rule, or the exception type and the innermost function (not the line number,
    which moves with every edit of the file)."""
    if isinstance(error, OracleViolation):
        return f"OracleViolation: {error.kind}"
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].name}" if frames else "?"
    return f"{type(error).__name__} in {where}"


def corpus_inputs(target: str) -> list[bytes]:
    directory = CORPUS_ROOT / target
    return [path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()] if directory.is_dir() else []


def _byte_mutate(rng: random.Random) -> Mutate:
    def mutate(data: bytes, max_size: int) -> bytes:
        buffer = bytearray(data)
        for _ in range(1 + int(rng.expovariate(0.7))):
            op = rng.randrange(4)
            if op == 0 and buffer:
                buffer[rng.randrange(len(buffer))] = rng.randrange(256)
            elif op == 1:
                buffer.insert(rng.randrange(len(buffer) + 1), rng.randrange(256))
            elif op == 2 and buffer:
                del buffer[rng.randrange(len(buffer))]
            elif buffer:
                start = rng.randrange(len(buffer))
                buffer[start:start] = buffer[start : start + rng.randrange(1, 16)]
        return bytes(buffer[:max_size])

    return mutate


def quiet_logs() -> None:
    """The targets log (JWKS loaded, refusals); a fuzz run would print millions of lines."""
    from loguru import logger

    logger.remove()


def run_plain(
    name: str, inputs: int, seed: int, artifacts: Path, slow_ms: float, max_seconds: float | None = None
) -> Report:
    quiet_logs()
    target = TARGETS[name]()
    recorder = Recorder(target, artifacts, slow_ms)
    rng = random.Random(seed)
    mutate = _byte_mutate(rng)
    pool = corpus_inputs(name) or [b""]
    started = time.perf_counter()
    for data in pool[:inputs]:
        recorder(data)
    deadline = started + max_seconds if max_seconds else None
    while recorder.execs < inputs and (deadline is None or time.perf_counter() < deadline):
        data = rng.choice(pool)
        mutated = target.mutator(data, MAX_INPUT_BYTES, rng, mutate)
        recorder(mutated)
        if len(pool) < 2000 and rng.random() < 0.05:
            pool.append(mutated)  # keep some mutants: several steps away from the seeds
    recorder.write_summary()
    return _report(name, "plain", recorder, time.perf_counter() - started, "n/a")


def _atheris_child(
    name: str, inputs: int, seed: int, artifacts: Path, slow_ms: float, scratch: Path, max_seconds: float | None
) -> None:
    atheris = importlib.import_module("atheris")  # untyped, and only installed for fuzzing

    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        import policies.loader  # noqa: F401 - imported here so atheris instruments them
        import signer.auth.jwks
        import signer.csr_checks
        import signer.request_checks  # noqa: F401
    quiet_logs()
    target = TARGETS[name]()
    recorder = Recorder(target, artifacts, slow_ms, expected=inputs)
    rng = random.Random(seed)

    def custom_mutator(data: bytes, max_size: int, mutator_seed: int) -> bytes:
        rng.seed(mutator_seed)
        return target.mutator(data, max_size, rng, atheris.Mutate)

    arguments = [
        sys.argv[0],
        f"-runs={inputs}",
        f"-seed={seed}",
        f"-max_len={MAX_INPUT_BYTES}",
        "-print_final_stats=1",
        "-timeout=10",
        "-rss_limit_mb=2048",
        *([f"-max_total_time={int(max_seconds)}"] if max_seconds else []),
        str(scratch),
        str(CORPUS_ROOT / name),
    ]
    dictionary = DICT_ROOT / f"{name}.dict"
    if dictionary.exists():
        arguments.insert(1, f"-dict={dictionary}")
    atheris.Setup(arguments, recorder, custom_mutator=custom_mutator)
    atheris.Fuzz()


def run_atheris(
    name: str, inputs: int, seed: int, artifacts: Path, slow_ms: float, max_seconds: float | None = None
) -> Report:
    with tempfile.TemporaryDirectory(prefix=f"meshsigner-fuzz-{name}-") as scratch:
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            "--child",
            "--target",
            name,
            "--inputs",
            str(inputs),
            "--seed",
            str(seed),
            "--artifacts",
            str(artifacts),
            "--slow-ms",
            str(slow_ms),
            "--scratch",
            scratch,
            *(["--max-seconds", str(max_seconds)] if max_seconds else []),
        ]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
        elapsed = time.perf_counter() - started
    log = result.stderr
    (artifacts / "libfuzzer.log").write_text(log)
    report = Report(name, "atheris", seconds=round(elapsed, 1))
    summary_file = artifacts / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        report.execs, report.refused, report.slow_inputs = summary["execs"], summary["refused"], summary["slow_inputs"]
        report.max_ms = round(summary["max_ms"], 1)
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    if done:
        report.execs = int(done[-1][0])
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", log)
    if coverage:
        report.coverage = f"{coverage[-1][0]} edges, {coverage[-1][1]} features"
    findings_log = artifacts / "findings.log"
    report.findings = len(findings_log.read_text().splitlines()) if findings_log.exists() else 0
    report.distinct_findings = sorted(set(findings_log.read_text().splitlines())) if findings_log.exists() else []
    interrupted = "run interrupted" in log or "max_total_time" in log
    if result.returncode != 0 or not (done or interrupted):
        report.distinct_findings.append(f"engine exited {result.returncode}: {log.strip().splitlines()[-3:]}")
        report.findings += 1
    return report


def _report(name: str, engine: str, recorder: Recorder, seconds: float, coverage: str) -> Report:
    return Report(
        name,
        engine,
        execs=recorder.execs,
        findings=recorder.findings,
        refused=recorder.refused,
        distinct_findings=sorted(recorder.seen),
        slow_inputs=recorder.slow_inputs,
        max_ms=round(recorder.max_ms, 1),
        coverage=coverage,
        seconds=round(seconds, 1),
    )


def run(
    name: str,
    inputs: int,
    *,
    engine: str,
    seed: int,
    artifacts: Path,
    slow_ms: float,
    max_seconds: float | None = None,
) -> Report:
    directory = artifacts / name
    if directory.exists():
        for stale in directory.iterdir():
            stale.unlink()
    if engine == "atheris":
        return run_atheris(name, inputs, seed, directory, slow_ms, max_seconds)
    return run_plain(name, inputs, seed, directory, slow_ms, max_seconds)


def atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="all", help=f"one of {', '.join(TARGETS)} or all")
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--engine", choices=("auto", "atheris", "plain"), default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--slow-ms", type=float, default=100.0)
    parser.add_argument("--max-seconds", type=float, help="stop a target after this long even below --inputs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _atheris_child(
            args.target, args.inputs, args.seed, args.artifacts, args.slow_ms, args.scratch, args.max_seconds
        )
        return 0
    engine = args.engine if args.engine != "auto" else ("atheris" if atheris_available() else "plain")
    names = list(TARGETS) if args.target == "all" else [args.target]
    failed = False
    for name in names:
        report = run(
            name,
            args.inputs,
            engine=engine,
            seed=args.seed,
            artifacts=args.artifacts,
            slow_ms=args.slow_ms,
            max_seconds=args.max_seconds,
        )
        known = KNOWN_FINDINGS.get(name, {})
        new = [finding for finding in report.distinct_findings if finding not in known]
        line = asdict(report) | {"per_100k_seconds": round(report.per_100k_seconds, 1), "new_findings": new}
        print(json.dumps(line), flush=True)
        failed = failed or bool(new)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
