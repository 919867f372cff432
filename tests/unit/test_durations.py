"""The one duration grammar of policies and flags: Go's form plus d, whole or fractional seconds, Go's String()."""

from __future__ import annotations

import pytest

from clocks.durations import describe_duration, format_duration, parse_duration, parse_duration_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("0s", 0), ("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("7d", 604800),
     ("1500ms", 1.5), ("500ms", 0.5), ("1.5s", 1.5), ("2us", 2e-6), ("3µs", 3e-6), ("10ns", 1e-8)],
)  # fmt: skip
def test_both_parsers_read_the_same_grammar(text: str, seconds: float) -> None:
    assert parse_duration_seconds(text) == pytest.approx(seconds)
    if float(seconds).is_integer():
        assert parse_duration(text) == seconds and isinstance(parse_duration(text), int)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("1y", "invalid duration '1y' (use Go form plus d, such as 24h, 90m, 7d)"),
        ("-1s", "invalid duration '-1s'"),
        ("1h ", "invalid duration '1h '"),
        ("forever", "invalid duration 'forever'"),
        ("9" * 30 + "d", "is too long"),
    ],
)
def test_both_parsers_refuse_the_same_text_with_the_same_message(text: str, message: str) -> None:
    for parse in (parse_duration, parse_duration_seconds):
        with pytest.raises(ValueError) as raised:
            parse(text)
        assert message in str(raised.value)


def test_whole_seconds_are_required_only_by_parse_duration() -> None:
    with pytest.raises(ValueError, match=r"^duration '1500ms' is not a whole number of seconds$"):
        parse_duration("1500ms")
    assert parse_duration_seconds("1500ms") == 1.5


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (1, "1s"), (60, "1m0s"), (3661, "1h1m1s"), (259200, "72h0m0s"), (-90, "-1m30s"),
     (0.5, "500ms"), (1.5, "1.5s"), (90.25, "1m30.25s"), (1.5e-6, "1.5µs"), (1e-9, "1ns")],
)  # fmt: skip
def test_format_is_gos_duration_string(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_formatted_durations_parse_back() -> None:
    for seconds in (0, 1, 59, 60, 3599, 3600, 86400, 90061, 3650 * 86400):
        assert parse_duration(format_duration(seconds)) == seconds
    for fraction in (0.5, 1.25, 0.001):
        assert parse_duration_seconds(format_duration(fraction)) == pytest.approx(fraction)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (604800, "7d"), (7200, "2h"), (5400, "1h30m"), (61, "1m1s")])
def test_describe_is_the_compact_form_authors_write(seconds: int, text: str) -> None:
    assert describe_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_go_durations_as_cert_manager_and_istio_csr_write_them() -> None:
    assert (format_duration(3600), format_duration(1800), format_duration(90), format_duration(5400)) == (
        "1h0m0s",
        "30m0s",
        "1m30s",
        "1h30m0s",
    )
