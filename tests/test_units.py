import pytest

from merino_edge.errors import InputError
from merino_edge.units import format_count, parse_bytes, parse_count, parse_ms, parse_percent


@pytest.mark.parametrize(
    "text, value",
    [("64M", 64_000_000), ("60G", 60_000_000_000), ("1.5K", 1500), ("2T", 2 * 10**12), ("512Ki", 512 * 1024), ("1Gi", 2**30), ("1e6", 10**6), (" 7 ", 7)],
)
def test_parse_count_decimal_and_binary(text, value):
    assert parse_count(text, "--params") == value


def test_parse_bytes_accepts_a_trailing_b():
    assert parse_bytes("1G", "--memory") == 10**9
    assert parse_bytes("512MiB", "--memory") == 512 * 2**20
    assert parse_bytes("1GB", "--memory") == 10**9


@pytest.mark.parametrize("text, ms", [("30ms", 30.0), ("30", 30.0), ("0.5s", 500.0), ("250us", 0.25), ("1e6ns", 1.0)])
def test_parse_ms(text, ms):
    assert parse_ms(text, "--latency-ms") == pytest.approx(ms)


@pytest.mark.parametrize("text, fraction", [("5%", 0.05), ("2.5", 0.025), (" 0 % ", 0.0)])
def test_parse_percent(text, fraction):
    assert parse_percent(text, "--latency-margin") == pytest.approx(fraction)


@pytest.mark.parametrize(
    "parse, text, words",
    [
        (parse_count, "64X", ["--flag", "'64X'", "unknown unit 'X'"]),
        (parse_count, "64MB", ["unknown unit 'MB'"]),  # counts are not bytes
        (parse_count, "-5G", ["'-5G'", "non-negative"]),
        (parse_count, "G", ["not a number"]),
        (parse_count, "inf", ["not a number"]),
        (parse_bytes, "1Gb", ["unknown unit 'Gb'"]),
        (parse_ms, "30min", ["unknown time unit 'min'"]),
        (parse_ms, "-1ms", ["non-negative"]),
        (parse_percent, "100%", ["percentage below 100"]),
        (parse_percent, "5ms", ["percentage below 100"]),
    ],
)
def test_bad_values_name_the_flag_and_the_text(parse, text, words):
    with pytest.raises(InputError) as info:
        parse(text, "--flag")
    message = str(info.value)
    assert message.startswith("--flag")
    for word in words:
        assert word in message


def test_format_count_round_trips_through_parse_count():
    for value in (60_000_000_000, 52_400_000, 1500, 12):
        assert parse_count(format_count(value)) == pytest.approx(value, rel=1e-3)
    assert format_count(60_000_000_000) == "60G"
