"""Strict parsing of `"(x, y)"` landmark strings from IUGC-style CSVs.

Points are `(x, y)` = (column, row) in pixels of the original image, pixel centres at integers, so
a valid point of a `(width, height)` image lies in `[-0.5, width - 0.5] x [-0.5, height - 0.5]`.
"""

import math
import re

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# ASCII only: `\d` would otherwise accept e.g. Arabic-Indic digits, which float() converts.
_POINT_RE = re.compile(
    r"\s*\(\s*(" + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*\)\s*", re.ASCII)


class PointError(ValueError):
  """A landmark string that is malformed or lies outside its image."""


def parse_point(text, where=""):
  """Parses `"(x, y)"` (ints or finite decimals, optional exponent) into a float tuple.

  Args:
    text: the cell's text.
    where: context for the error message, e.g. `"train.csv line 7, column PS1"`.

  Returns:
    `(x, y)` python floats.

  Raises:
    PointError: for anything else (empty parts, words, NaN, inf, three numbers, ...).
  """
  prefix = f"{where}: " if where else ""
  if not isinstance(text, str):
    raise PointError(f"{prefix}expected a point string like \"(12.5, 40)\", got {text!r}")
  match = _POINT_RE.fullmatch(text)
  if match is None:
    raise PointError(f"{prefix}malformed point {text!r}; expected \"(x, y)\" with two finite "
                     "numbers, e.g. \"(12.5, 40)\"")
  x, y = float(match.group(1)), float(match.group(2))
  if not (math.isfinite(x) and math.isfinite(y)):  # e.g. 1e999
    raise PointError(f"{prefix}point {text!r} is not finite")
  return x, y


def check_in_image(point, size, where=""):
  """Raises PointError unless `point` `(x, y)` lies in the image of `size` `(width, height)`."""
  x, y = point
  width, height = size
  if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
    prefix = f"{where}: " if where else ""
    raise PointError(
        f"{prefix}point ({x:g}, {y:g}) lies outside the {width}x{height} image (valid: x in "
        f"[-0.5, {width - 0.5:g}], y in [-0.5, {height - 0.5:g}]); check the annotation and that "
        "the CSV row refers to the right image")


def format_point(point):
  """`(x, y)` -> `"(x, y)"`, integers without a decimal point, floats with `repr` precision."""
  def fmt(v):
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
  return f"({fmt(point[0])}, {fmt(point[1])})"
