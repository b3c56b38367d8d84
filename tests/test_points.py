"""Tests for aop_tf.io.points: strict "(x, y)" parsing, bounds, formatting round trip."""

import math

import pytest
from hypothesis import given, strategies as st

from aop_tf.io import points

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("text, expected", [
    ("(12, 40)", (12.0, 40.0)),
    ("(12.5,40.25)", (12.5, 40.25)),
    ("  ( -0.5 , 3e2 ) ", (-0.5, 300.0)),
    ("(.5, 7.)", (0.5, 7.0)),
    ("(+3, -4)", (3.0, -4.0)),
])
def test_parses_valid(text, expected):
  assert points.parse_point(text) == expected


@pytest.mark.parametrize("text", [
    "(12, )", "( , 3)", "(12 40)", "12, 40", "(12, 40", "12, 40)", "(1, 2, 3)", "(a, b)",
    "(nan, 1)", "(1, NaN)", "(inf, 2)", "(-Infinity, 2)", "(1e999, 2)", "", "()", "None",
    "(0x10, 2)", "(1_000, 2)", "[1, 2]", "(1;2)", "(1, 2) x", "(\u0661, 2)", "(1,\n2)x",
])
def test_rejects_malformed(text):
  with pytest.raises(points.PointError):
    points.parse_point(text)


def test_rejects_non_strings():
  for value in (None, 3.0, (1, 2)):
    with pytest.raises(points.PointError):
      points.parse_point(value)


def test_error_names_the_place_and_value():
  with pytest.raises(points.PointError) as info:
    points.parse_point("(12, )", where="train.csv line 7, column PS2")
  message = str(info.value)
  assert "train.csv line 7, column PS2" in message and "(12, )" in message


@given(finite, finite)
def test_format_parse_round_trip(x, y):
  assert points.parse_point(points.format_point((x, y))) == (x, y)


@given(finite, finite, st.sampled_from(["{:.3f}", "{:g}", "{:.6e}", "{}"]))
def test_round_trip_of_formatted_floats(x, y, fmt):
  text = "(" + fmt.format(x) + ", " + fmt.format(y) + ")"
  px, py = points.parse_point(text)
  assert px == float(fmt.format(x)) and py == float(fmt.format(y))


@given(st.text(alphabet="()0123456789., -+eEaxn", max_size=16))
def test_random_text_parses_or_raises_cleanly(text):
  try:
    x, y = points.parse_point(text)
  except points.PointError:
    return
  assert math.isfinite(x) and math.isfinite(y)


@given(st.text(min_size=1, alphabet=st.characters(blacklist_categories=("Nd",))))
def test_text_without_digits_is_rejected(text):
  with pytest.raises(points.PointError):
    points.parse_point(text)


def test_bounds_are_pixel_area():
  size = (256, 128)
  for ok in ((-0.5, -0.5), (255.5, 127.5), (0, 0), (100.25, 60)):
    points.check_in_image(ok, size)
  for bad in ((-0.51, 0), (0, -0.6), (255.51, 0), (0, 127.6), (300, 40)):
    with pytest.raises(points.PointError, match="outside the 256x128 image"):
      points.check_in_image(bad, size, "val.csv line 3, column FH1")


def test_format_point():
  assert points.format_point((12.0, 40)) == "(12, 40)"
  assert points.format_point((12.5, -0.25)) == "(12.5, -0.25)"
