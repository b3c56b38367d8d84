"""Synthetic transperineal-ultrasound phantom with exactly known landmarks.

A fan-shaped sector of speckle, a bright elongated pubic symphysis (an ellipse in the upper part)
and an elliptical fetal head with a bright rim below and to the right. The landmarks follow from
the geometry, not from the pixels: PS1/PS2 are the right/left ends of the symphysis' major axis and
FH1 is the point where the tangent from PS1 touches the head ellipse, on the side that gives the
larger AoP (computed in closed form: an affine map turns the ellipse into the unit circle and keeps
tangency). Everything is a pure function of `seed`.

`make_phantom_frame(aop_deg, seed, frame)` renders a frame of a cine loop with a prescribed AoP:
the seed's scan with the head turned about PS1 (the tangent turns with it, so the AoP is exact)
and the speckle changing a little from frame to frame.

Coordinates follow `aop_tf.geometry`: `(x, y)` = (column, row), pixel centres at integers.
"""

import math

import cv2
import numpy as np

from aop_tf import geometry
from aop_tf.io.records import Record

# AoP range the sampler accepts, degrees (the clinical range of the real data is ~90..160).
AOP_RANGE_DEG = (90.0, 160.0)
# Value of the landmark markers painted with `mark_landmarks=True`; every other pixel is <= this
# minus MARKER_GAP so the markers stay the brightest pixels after mild interpolation.
MARKER_VALUE = 255
MARKER_GAP = 55


def _rotation(angle_rad):
  c, s = math.cos(angle_rad), math.sin(angle_rad)
  return np.array([[c, -s], [s, c]], dtype=np.float64)


def _ellipse_radius(xx, yy, centre, semi_axes, angle_rad):
  """Normalised elliptical radius: < 1 inside, 1 on the boundary, > 1 outside."""
  c, s = math.cos(angle_rad), math.sin(angle_rad)
  dx, dy = xx - centre[0], yy - centre[1]
  u = c * dx + s * dy  # coordinates in the ellipse frame
  v = -s * dx + c * dy
  return np.sqrt((u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2)


def _sigmoid(z):
  return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def tangent_points(point, centre, semi_axes, angle_rad):
  """The two points where tangents from `point` touch an ellipse.

  Args:
    point: `(x, y)` outside the ellipse.
    centre: `(x, y)` centre; semi_axes: `(a, b)` along the rotated x and y axes; angle_rad: rotation
      of the ellipse's first axis from the image x axis (y down, so positive turns clockwise on
      screen).

  Returns:
    float64 [2, 2] tangent points `(x, y)`, or None when `point` is inside or on the ellipse.
  """
  rot = _rotation(angle_rad)
  local = rot.T @ (np.asarray(point, np.float64) - np.asarray(centre, np.float64))
  unit = local / np.asarray(semi_axes, np.float64)  # the ellipse becomes the unit circle
  rho = float(np.hypot(unit[0], unit[1]))
  if rho <= 1.0:
    return None
  base = math.atan2(unit[1], unit[0])
  half = math.acos(1.0 / rho)
  ts = np.array([base - half, base + half])
  on_circle = np.stack([np.cos(ts), np.sin(ts)], axis=-1) * np.asarray(semi_axes, np.float64)
  return on_circle @ rot.T + np.asarray(centre, np.float64)


def _sample_geometry(rng, size):
  """Draws ellipse parameters (in pixels) until the landmarks are valid; returns a dict."""
  s = float(size)
  for _ in range(1000):
    ps_centre = np.array([rng.uniform(0.36, 0.5), rng.uniform(0.13, 0.2)]) * s
    ps_axes = np.array([rng.uniform(0.11, 0.17), rng.uniform(0.022, 0.035)]) * s
    ps_angle = math.radians(rng.uniform(-22.0, -4.0))  # right end higher, as in real scans
    head_centre = np.array([rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.75)]) * s
    head_axes = np.array([rng.uniform(0.22, 0.3), rng.uniform(0.18, 0.26)]) * s
    head_angle = math.radians(rng.uniform(-35.0, 35.0))

    end = _rotation(ps_angle) @ np.array([ps_axes[0], 0.0])
    ps1, ps2 = ps_centre + end, ps_centre - end
    touch = tangent_points(ps1, head_centre, head_axes, head_angle)
    if touch is None:
      continue
    # The symphysis must stay clear of the head.
    xx = np.array([ps1[0], ps2[0], ps_centre[0]])
    yy = np.array([ps1[1], ps2[1], ps_centre[1]])
    if np.any(_ellipse_radius(xx, yy, head_centre, head_axes, head_angle) < 1.15):
      continue
    angles = np.asarray(geometry.angle_deg(ps1[None], ps2[None], touch))
    pick = int(np.argmax(angles))
    aop = float(angles[pick])
    fh1 = touch[pick]
    landmarks = np.stack([ps1, ps2, fh1]).astype(np.float32)
    margin = 0.03 * s
    if np.any(landmarks < margin) or np.any(landmarks > s - 1.0 - margin):
      continue
    if not AOP_RANGE_DEG[0] <= aop <= AOP_RANGE_DEG[1]:
      continue
    return dict(ps_centre=ps_centre, ps_axes=ps_axes, ps_angle=ps_angle, head_centre=head_centre,
                head_axes=head_axes, head_angle=head_angle, landmarks=landmarks, aop_deg=aop)
  raise RuntimeError("phantom: no valid geometry after 1000 draws; check the sampling ranges")


def _render(geo, rng, size, frame_speckle=None, speckle_change=0.0):
  """The scan of geometry `geo`: float64 image [H, W] in 0..255, uint8 mask [H, W] and the fan
  (bool [H, W], where the probe sees).

  The fan, tissue layers and speckle are drawn from `rng` (in this order, so a seed renders the
  same scan whatever the head's position); `frame_speckle` (a Generator), if given, blends
  `speckle_change` of its own speckle into the pattern (a frame of a clip).
  """
  s = float(size)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

  # Fan-shaped sector with its apex above the image, as from a curvilinear probe.
  apex = np.array([0.5 * s + rng.uniform(-0.04, 0.04) * s, -0.18 * s])
  half_angle = math.radians(rng.uniform(38.0, 46.0))
  depth = np.hypot(xx - apex[0], yy - apex[1])
  bearing = np.arctan2(xx - apex[0], yy - apex[1])
  sector = (np.abs(bearing) <= half_angle) & (depth >= 0.2 * s) & (depth <= 1.3 * s)

  # Tissue: dim, attenuating with depth, with a few soft horizontal layers.
  tissue = 55.0 * np.exp(-0.5 * (depth - 0.2 * s) / s)
  tissue += 12.0 * np.sin(yy / s * rng.uniform(8.0, 14.0) + rng.uniform(0, 2 * math.pi))
  ps_r = _ellipse_radius(xx, yy, geo["ps_centre"], geo["ps_axes"], geo["ps_angle"])
  head_r = _ellipse_radius(xx, yy, geo["head_centre"], geo["head_axes"], geo["head_angle"])
  ps = _sigmoid((1.0 - ps_r) / (8.0 / s))
  rim_width = 0.045
  rim = np.exp(-0.5 * ((head_r - 0.985) / rim_width) ** 2)
  inside_head = _sigmoid((1.0 - head_r) / 0.02)
  signal = tissue * (1.0 - 0.45 * inside_head) + 190.0 * rim + 200.0 * ps

  # Speckle: multiplicative Rayleigh noise (mean 1), slightly correlated like a real PSF.
  speckle = rng.rayleigh(scale=1.0, size=(size, size)) / math.sqrt(math.pi / 2.0)
  if frame_speckle is not None:
    own = frame_speckle.rayleigh(scale=1.0, size=(size, size)) / math.sqrt(math.pi / 2.0)
    speckle = (1.0 - speckle_change) * speckle + speckle_change * own
  speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=0.9, sigmaY=0.6)
  image = signal * (0.35 + 0.65 * speckle)
  image = np.where(sector, image, 0.0)
  image = np.clip(image, 0.0, 255.0)

  mask = np.zeros((size, size), np.uint8)
  mask[head_r <= 1.0] = 2
  mask[ps_r <= 1.0] = 1
  return image, mask, sector


def _check_size(size):
  size = int(size)
  if size < 32:
    raise ValueError(f"phantom size must be >= 32 pixels, got {size}")
  return size


def make_phantom(seed, size=256, mark_landmarks=False):
  """Renders one deterministic phantom.

  Args:
    seed: int; the same seed always gives the same phantom.
    size: image side in pixels (square image).
    mark_landmarks: if True, the image is dimmed to at most `MARKER_VALUE - MARKER_GAP` and a 3x3
      cross of `MARKER_VALUE` (255) is painted at each landmark's nearest pixel, so a test can
      follow the landmarks through geometric augmentation by finding the brightest blobs.

  Returns:
    dict with `image` uint8 [H, W], `mask` uint8 [H, W] (0 background, 1 pubic symphysis, 2 fetal
    head), `landmarks` float32 [3, 2] `(x, y)` pixels in order PS1, PS2, FH1, `aop_deg` float (the
    AoP of `landmarks`), and `geometry` (the ellipse parameters in pixels and radians).
  """
  size = _check_size(size)
  rng = np.random.default_rng(int(seed))
  geo = _sample_geometry(rng, size)
  image, mask, _ = _render(geo, rng, size)

  landmarks = geo["landmarks"]
  if mark_landmarks:
    image *= (MARKER_VALUE - MARKER_GAP) / 255.0
    for x, y in np.rint(landmarks).astype(int):
      for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        if 0 <= x + dx < size and 0 <= y + dy < size:
          image[y + dy, x + dx] = MARKER_VALUE
  return _result(image, mask, geo)


def _result(image, mask, geo):
  return dict(image=np.rint(image).astype(np.uint8), mask=mask, landmarks=geo["landmarks"],
              aop_deg=geo["aop_deg"],
              geometry={k: v for k, v in geo.items() if k not in ("landmarks", "aop_deg")})


def _head_turned(geo, turn_rad):
  """`geo` with the head turned rigidly by `turn_rad` about PS1, its FH1 and AoP recomputed."""
  ps1, ps2 = _ps_ends(geo)
  centre = ps1 + _rotation(turn_rad) @ (geo["head_centre"] - ps1)
  angle = geo["head_angle"] + turn_rad
  touch = tangent_points(ps1, centre, geo["head_axes"], angle)
  if touch is None:
    return None
  angles = np.asarray(geometry.angle_deg(ps1[None], ps2[None], touch))
  pick = int(np.argmax(angles))
  landmarks = np.stack([ps1, ps2, touch[pick]])
  return dict(geo, head_centre=centre, head_angle=angle, landmarks=landmarks.astype(np.float32),
              aop_deg=float(angles[pick]))


def _ps_ends(geo):
  """PS1, PS2 (float64 `(x, y)`): the right and left ends of the symphysis' major axis."""
  end = _rotation(geo["ps_angle"]) @ np.array([geo["ps_axes"][0], 0.0])
  return geo["ps_centre"] + end, geo["ps_centre"] - end


def _geometry_for_aop(geo, aop_deg, size, where):
  """`geo` with the head turned about PS1 so that the AoP is `aop_deg` (a rigid turn about PS1
  turns the tangent from PS1 by the same angle, so one of the two signs is exact)."""
  turn = math.radians(aop_deg - geo["aop_deg"])
  turned = [g for g in (_head_turned(geo, turn), _head_turned(geo, -turn)) if g is not None]
  moved = min(turned, key=lambda g: abs(g["aop_deg"] - aop_deg), default=None)
  if moved is None or abs(moved["aop_deg"] - aop_deg) > 1e-3:  # float32 angles: ~1e-5 deg
    raise ValueError(f"{where}: no head position gives AoP {aop_deg} deg")
  points = np.stack([*_ps_ends(geo), geo["ps_centre"]])
  clear = _ellipse_radius(points[:, 0], points[:, 1], moved["head_centre"], moved["head_axes"],
                          moved["head_angle"])
  margin = 0.03 * size
  inside = np.all(moved["landmarks"] >= margin) and np.all(moved["landmarks"] <= size - 1 - margin)
  if np.any(clear < 1.15) or not inside:
    raise ValueError(f"{where}: AoP {aop_deg} deg puts the head over the symphysis or FH1 out of "
                     "the image; choose an AoP nearer the seed's own or another seed")
  return moved


# A seed whose scan takes every AoP from 80 to 153 deg (156 at 256 px) with FH1 in the fan.
CLIP_SEED = 18


def make_phantom_frame(aop_deg, seed=CLIP_SEED, frame=0, size=256, speckle_change=0.15):
  """One frame of a phantom clip whose AoP is exactly `aop_deg` degrees.

  The scan is phantom `seed`'s (symphysis, head shape, fan, tissue; `make_phantom(seed)`); the
  head is turned rigidly about PS1 until the tangent from PS1 meets it at `aop_deg`. The speckle
  is the seed's pattern with `speckle_change` of frame `frame`'s own mixed in, so consecutive
  frames differ a little, as in a cine loop (with `speckle_change=0` and the seed's own AoP the
  frame equals `make_phantom(seed)`).

  Returns:
    the dict of `make_phantom`: `image` uint8 [H, W], `mask`, `landmarks` float32 [3, 2] `(x, y)`
    px (PS1, PS2, FH1; PS1 and PS2 the same in every frame of a seed), `aop_deg`, `geometry`.

  Raises:
    ValueError when the head would cover the symphysis or FH1 leave the image or the fan.
  """
  size = _check_size(size)
  rng = np.random.default_rng(int(seed))
  geo = _geometry_for_aop(_sample_geometry(rng, size), float(aop_deg), size,
                          f"phantom seed {seed}")
  frame_rng = np.random.default_rng([int(seed), int(frame), 1])
  image, mask, sector = _render(geo, rng, size, frame_rng, speckle_change)
  x, y = np.rint(geo["landmarks"][2]).astype(int)
  if not sector[y, x]:
    raise ValueError(f"phantom seed {seed}: at AoP {aop_deg} deg FH1 lies outside the fan; "
                     "choose an AoP nearer the seed's own or another seed")
  return _result(image, mask, geo)


# Seeds of split `s` start at SPLIT_SEED_STRIDE * index(s), so splits never share a phantom.
SPLIT_SEED_STRIDE = 1_000_000


def iter_records(split_index, count, size=256, seed=0):
  """Yields `count` phantom `data_prep.Record`s (with masks) for the split numbered `split_index`.

  File names are `phantom_<seed>.png`, the seed being `seed + SPLIT_SEED_STRIDE * split_index + i`.
  """
  first = int(seed) + SPLIT_SEED_STRIDE * int(split_index)
  for i in range(int(count)):
    phantom = make_phantom(first + i, size=size)
    yield Record(filename=f"phantom_{first + i:07d}.png", image=phantom["image"],
                 landmarks=phantom["landmarks"], mask=phantom["mask"])
