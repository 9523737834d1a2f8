"""Strict number parsing: ASCII digits, finite, in range, or a ValueError saying what."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greentap.core.numbers import parse_decimal, parse_int, parse_size


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "+1", "-1", "1_0", "0x10", "1.0", "\u00b2", "\u0664\u0662", "\uff14\uff12",
     "\u0967", "1\u00b2", "\u09e8"],
)  # fmt: skip
def test_only_ascii_digits_make_a_whole_number(text):
    """Signs, spaces, underscores, superscripts and other scripts' digits are refused."""
    with pytest.raises(ValueError, match="a whole number from 0 to 100"):
        parse_int(text, 0, 100)


def test_whole_numbers_in_range():
    """ASCII digits within the bounds are read; the bounds are inclusive."""
    assert (parse_int("0", 0, 5), parse_int("5", 0, 5), parse_int("007", 0, 9)) == (0, 5, 7)
    for text in ("6", "99999999999999999999"):
        with pytest.raises(ValueError):
            parse_int(text, 0, 5)


@pytest.mark.parametrize(
    "text", ["inf", "nan", "-inf", "1e999", "", ".", "e3", "1e", "1,5", "\u00b2", "0x1", " 1"]
)
def test_decimals_are_finite_plain_numbers(text):
    """inf, nan, overflow to infinity and anything not a plain decimal are refused."""
    with pytest.raises(ValueError):
        parse_decimal(text, 0, 1e9)


def test_decimal_bounds_and_the_off_value():
    """An open lower bound excludes itself; zero=True lets exactly 0 through."""
    assert parse_decimal("2.5", 0, 10) == 2.5 and parse_decimal(".5", 0, 1) == 0.5
    assert parse_decimal("1e3", 0, 1e3) == 1000.0
    with pytest.raises(ValueError, match="above 0"):
        parse_decimal("0", 0, 10, low_open=True)
    assert parse_decimal("0", 0.1, 10, zero=True) == 0.0
    with pytest.raises(ValueError, match=r"0 \(off\) or a number from 0\.1 to 10"):
        parse_decimal("0.05", 0.1, 10, zero=True)


def test_sizes():
    """Sizes take k, M and G (either case) and are at least 1 byte."""
    assert [parse_size(t) for t in ("1", "2k", "3M", "1g")] == [1, 2048, 3 << 20, 1 << 30]
    for text in ("0", "1T", "M", "1.5M", "-1", "\u00b2k"):
        with pytest.raises(ValueError):
            parse_size(text)


@given(st.text(max_size=12))
def test_anything_parses_to_a_number_in_range_or_raises_valueerror(text):
    """No input escapes with another exception, and what passes is in range."""
    for parse, low, high in ((parse_int, 0, 65535), (parse_decimal, 0.0, 1e9)):
        try:
            value = parse(text, low, high)
        except ValueError:
            continue
        assert low <= value <= high and text.isascii()
