"""The short soak (bench/soak.py, ~60 s): serve --signer local at a steady rate, RSS and open fds flat after the
warm-up. `make soak` runs the long one (30 minutes by default); its figures are in docs/faults.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
# A minute is too short to tell a slow leak from allocator noise, so the short bound is loose (a leak of a few KiB
# per request at 20/s still breaks it: test_the_short_bound_catches_a_per_request_leak); the 30-minute run holds
# the tight one.
SHORT = {"minutes": 1.0, "rate": 20.0, "sample_seconds": 2.0, "warmup_seconds": 20.0}
SHORT_BOUNDS = {"max_rss_slope": 120.0, "max_fd_growth": 4}


def _soak_module():
    spec = importlib.util.spec_from_file_location("meshsigner_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _series(soak, rss_step_mib: float, fd_every: int = 0, minutes: float = 10, sample_seconds: float = 5.0):
    """A result of ``minutes`` of samples: RSS rising by ``rss_step_mib`` a sample (with +-0.3 MiB of allocator
    noise), one more fd every ``fd_every`` samples."""
    result = soak.SoakResult(minutes=minutes, rate=20, sent=100, codes={"OK": 100})
    for i in range(int(minutes * 60 / sample_seconds)):
        noise = 0.3 if i % 2 else -0.3
        fds = 20 + (i // fd_every if fd_every else 0)
        rss = 70 + i * rss_step_mib + noise
        result.samples.append(soak.Sample(seconds=i * sample_seconds, rss_mib=rss, fds=fds, sent=i))
    return result


def test_the_soak_bounds_catch_growth_and_pass_noise():
    soak = _soak_module()
    flat = _series(soak, 0.0)
    soak.judge(flat, warmup_seconds=60, max_rss_slope=8.0, max_fd_growth=4)
    assert flat.passed, flat.failures
    leaking = _series(soak, 0.05)  # 0.05 MiB per 5 s = 36 MiB/h
    soak.judge(leaking, warmup_seconds=60, max_rss_slope=8.0, max_fd_growth=4)
    assert not leaking.passed and "RSS grows" in leaking.failures[0], leaking.failures
    fd_leak = _series(soak, 0.0, fd_every=10)
    soak.judge(fd_leak, warmup_seconds=60, max_rss_slope=8.0, max_fd_growth=4)
    assert any("open fds" in f for f in fd_leak.failures), fd_leak.failures


def test_the_short_bound_catches_a_per_request_leak():
    soak = _soak_module()
    window = {"minutes": SHORT["minutes"], "sample_seconds": SHORT["sample_seconds"]}
    flat = _series(soak, 0.0, **window)
    middle = (SHORT["warmup_seconds"] + SHORT["minutes"] * 60) / 2
    flat.samples = [  # the heap grown once by half a MiB in the middle of the measured part: a step, not a slope
        soak.Sample(s.seconds, s.rss_mib + (0.5 if s.seconds >= middle else 0.0), s.fds, s.sent) for s in flat.samples
    ]
    soak.judge(flat, SHORT["warmup_seconds"], **SHORT_BOUNDS)
    assert flat.passed, flat.failures
    per_sample_mib = 4 / 1024 * SHORT["rate"] * SHORT["sample_seconds"]  # 4 KiB kept per request
    leaking = _series(soak, per_sample_mib, **window)
    soak.judge(leaking, SHORT["warmup_seconds"], **SHORT_BOUNDS)
    assert not leaking.passed and "RSS grows" in leaking.failures[0], leaking.failures
    fd_leak = _series(soak, 0.0, fd_every=3, **window)  # one socket kept every 6 s
    soak.judge(fd_leak, SHORT["warmup_seconds"], **SHORT_BOUNDS)
    assert any("open fds" in f for f in fd_leak.failures), fd_leak.failures


def test_short_soak_keeps_rss_and_fds_flat():
    soak = _soak_module()
    result = soak.run(**SHORT, **SHORT_BOUNDS)
    print(
        f"\nSOAK sent {result.sent} {result.codes}; RSS {result.rss_start_mib:.1f} -> {result.rss_end_mib:.1f} MiB "
        f"(max {result.rss_max_mib:.1f}, slope {result.rss_slope_mib_per_hour:+.1f} MiB/h); fds {result.fd_min}-"
        f"{result.fd_max}"
    )
    assert result.sent >= 1000, result.sent
    assert result.passed, result.failures
