"""Property tests (hypothesis) for issue 7: the CSV point parser and the AoP geometry never crash
on any input, accept exactly the valid points, and flag degenerate geometry with NaN.

Complements tests/test_points.py and tests/test_heatmap.py (hand-worked cases, round trips,
similarity invariance) with adversarial inputs: any Unicode text, single-character mutations of
valid cells, whole CSV rows with quotes and newlines, and coordinates that coincide or nearly so.
"""

import csv
import math
import os
import re
import tempfile

import cv2
import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from aop_tf import geometry
from aop_tf import metrics
from aop_tf.io import labels
from aop_tf.io import points
from aop_tf.io.records import InputError, Record

FAST = settings(max_examples=60, deadline=None)
MANY = settings(max_examples=300, deadline=None)  # the parser: microseconds per example
GEOMETRY = settings(max_examples=100, deadline=None)  # a few eager TF calls per example

# --------------------------------------------------------------------------------------------
# The point parser.

_space = st.sampled_from(["", " ", "  ", "\t"])
_number = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.3e}"),
    st.floats(0, 1e3, allow_nan=False).map(lambda v: f"+{v:g}"),
    st.integers(0, 999).map(lambda v: f".{v}"),
    st.integers(0, 999).map(lambda v: f"{v}."),
    st.integers(0, 99).map(lambda v: f"00{v}"),
)


@st.composite
def _valid_cell(draw):
  x, y = draw(_number), draw(_number)
  s = [draw(_space) for _ in range(6)]
  return f"{s[0]}({s[1]}{x}{s[2]},{s[3]}{y}{s[4]}){s[5]}", (float(x), float(y))


@MANY
@given(_valid_cell())
def test_every_valid_cell_parses_to_its_numbers(cell):
  text, expected = cell
  assert points.parse_point(text) == expected


def _parses_or_refuses(text):
  """parse_point's only outcomes: two finite floats, or PointError."""
  try:
    x, y = points.parse_point(text)
  except points.PointError as e:
    assert str(e)
    return None
  assert math.isfinite(x) and math.isfinite(y)
  assert isinstance(x, float) and isinstance(y, float)
  return x, y


@MANY
@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_cleanly(text):
  result = _parses_or_refuses(text)
  if result is not None:  # only ASCII digits, signs, '.', 'e', ',', brackets and white space
    assert text.isascii() and text.strip().startswith("(") and text.strip().endswith(")")


@MANY
@given(_valid_cell(), st.data())
def test_single_character_mutations_never_crash(cell, data):
  text, _ = cell
  i = data.draw(st.integers(0, len(text)))
  char = data.draw(st.characters(blacklist_categories=("Cs",)))
  mutated = data.draw(st.sampled_from([text[:i] + text[i + 1:], text[:i] + char + text[i:],
                                       text[:i] + char + text[i + 1:]]))
  result = _parses_or_refuses(mutated)
  if result is not None:  # whatever is accepted survives its own round trip
    assert points.parse_point(points.format_point(result)) == result


@MANY
@given(x=st.floats(allow_nan=True, allow_infinity=True),
       y=st.floats(allow_nan=True, allow_infinity=True),
       w=st.integers(1, 5000), h=st.integers(1, 5000))
def test_bounds_check_accepts_exactly_the_image_area(x, y, w, h):
  inside = -0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5  # False for NaN
  try:
    points.check_in_image((x, y), (w, h), "here")
    assert inside
  except points.PointError as e:
    assert not inside and str(e).startswith("here: point")


_cell_text = st.one_of(_valid_cell().map(lambda c: c[0]),
                       st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                               max_size=20))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.sampled_from(["a.png", "b.png", "../a.png", "", "c.png",
                                                 "a\x00.png", "sub/../a.png"]),
                               _cell_text, _cell_text, _cell_text), max_size=8),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_csv_rows_are_each_accounted_for(rows, encoding):
  """Any CSV (quotes, commas, newlines, NULs in cells) -> one Record or InputError per row."""
  with tempfile.TemporaryDirectory() as folder:
    cv2.imwrite(os.path.join(folder, "a.png"), np.full((40, 60), 9, np.uint8))
    cv2.imwrite(os.path.join(folder, "b.png"), np.full((40, 60), 9, np.uint8))
    path = os.path.join(folder, "train.csv")
    with open(path, "w", newline="", encoding=encoding) as f:
      writer = csv.writer(f)
      writer.writerow(["Filename", "PS1", "PS2", "FH1"])
      writer.writerows(rows)
    read = labels.read_rows(path)
    items = list(labels.iter_records(read, folder, {}, "train"))
    with open(path, encoding=encoding, newline="") as f:
      text = f.read()
  # Rows are the file's lines as an editor shows them (a newline inside a quoted cell makes two,
  # both refused), blank lines excepted: every one comes back as a Record or a refusal.
  expected = [line for line in re.split(r"\r\n|\r|\n", text)[1:] if line.strip()]
  assert len(read) == len(items) == len(expected)
  for item in items:
    assert isinstance(item, (Record, InputError))
    if isinstance(item, InputError):
      assert "train.csv line " in str(item) and item.reason
    else:
      assert item.filename in ("a.png", "b.png") and item.landmarks.shape == (3, 2)
      assert np.all(np.isfinite(item.landmarks))


# --------------------------------------------------------------------------------------------
# Geometry: the AoP and its degenerate cases.

# Sub-pixel coordinates on a 1/1024 px grid. (Coordinates near 1e-38, whose differences are
# subnormal, would meet TensorFlow's flush-to-zero on CPU; no image has such points.)
_coord = st.integers(-10**7, 10**7).map(lambda k: k / 1024.0)
_point = st.tuples(_coord, _coord)


def _reference_deg(landmarks):
  """The angle at PS1 in float64 by another formula (acos of the normalised dot product)."""
  p = np.asarray(landmarks, np.float64)
  u, v = p[1] - p[0], p[2] - p[0]
  cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
  return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


@GEOMETRY
@given(_point, _point, _point)
def test_aop_is_an_angle_or_nan_exactly_when_degenerate(ps1, ps2, fh1):
  landmarks = np.array([ps1, ps2, fh1], np.float32)
  aop = float(geometry.aop_deg(landmarks))
  coincident = bool(np.all(landmarks[0] == landmarks[1]) or np.all(landmarks[0] == landmarks[2]))
  assert math.isnan(aop) == coincident == bool(geometry.is_degenerate(landmarks))
  if not coincident:
    assert 0.0 <= aop <= 180.0
    swapped = float(geometry.aop_deg(landmarks[[0, 2, 1]]))
    assert swapped == aop  # the angle does not depend on which ray is first


@GEOMETRY
@given(_point, st.floats(1.0, 1e3), st.floats(-math.pi, math.pi), st.floats(1.0, 1e3),
       st.floats(-math.pi, math.pi))
def test_aop_matches_an_independent_formula(ps1, r1, a1, r2, a2):
  ps1 = np.array(ps1, np.float64)
  ps2 = ps1 + r1 * np.array([math.cos(a1), math.sin(a1)])
  fh1 = ps1 + r2 * np.array([math.cos(a2), math.sin(a2)])
  landmarks = np.stack([ps1, ps2, fh1]).astype(np.float32)
  want = _reference_deg(landmarks)
  assume(1.0 < want < 179.0)  # acos, the reference, is ill-conditioned near 0 and 180 degrees
  assert abs(float(geometry.aop_deg(landmarks)) - want) < 0.05


@FAST
@given(st.lists(st.tuples(_point, _point, _point, st.sampled_from(["none", "ps2", "fh1",
                                                                   "all"])),
                min_size=1, max_size=12))
def test_batches_mixing_degenerate_examples_are_elementwise(examples):
  batch = []
  for ps1, ps2, fh1, collapse in examples:
    ps2 = ps1 if collapse in ("ps2", "all") else ps2
    fh1 = ps1 if collapse in ("fh1", "all") else fh1
    batch.append([ps1, ps2, fh1])
  batch = np.array(batch, np.float32)
  together = geometry.aop_deg(batch)
  alone = np.array([float(geometry.aop_deg(example)) for example in batch], np.float32)
  np.testing.assert_array_equal(np.isnan(together), np.isnan(alone))
  np.testing.assert_allclose(together[~np.isnan(alone)], alone[~np.isnan(alone)], atol=1e-4)
  # Metrics count degenerate predictions and leave them out of the AoP statistics, no crash.
  gt = np.tile(np.array([[[10, 10], [40, 10], [10, 40]]], np.float32), (len(batch), 1, 1))
  errors = metrics.per_image_errors(batch, gt, (64, 64))
  report = metrics.report(errors)
  degenerate = int(np.isnan(alone).sum())
  assert report["n_degenerate"] == degenerate
  assert report["aop_error_deg"]["n"] == len(batch) - degenerate


@FAST
@given(_point.filter(lambda p: abs(p[0]) >= 1.0), st.integers(1, 64))
def test_nearly_coincident_points_are_still_defined(ps1, ulps):
  """One float32 step apart is not coincident: the AoP is defined (if imprecise), not NaN."""
  p = np.array(ps1, np.float32)
  ps2 = p.copy()
  ps2[0] = np.nextafter(p[0], np.float32(np.inf))
  for _ in range(ulps - 1):
    ps2[0] = np.nextafter(ps2[0], np.float32(np.inf))
  fh1 = p + np.float32(100.0)
  aop = float(geometry.aop_deg(np.stack([p, ps2, fh1])))
  assert math.isfinite(aop) and 0.0 <= aop <= 180.0
