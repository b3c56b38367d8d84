"""Pictures for people: landmark/AoP overlays and heatmap panels (uint8 RGB numpy arrays).

Points are `(x, y)` in pixels of the image passed in, order PS1, PS2, FH1, pixel centres at
integers. Small images are upscaled for legibility and the points mapped with
`geometry.rescale_points`. Drawing is OpenCV with sub-pixel precision (`shift`), a few ms per
picture, so it can run every epoch for TensorBoard.
"""

import math
import os

import cv2
import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf import geometry

GT_COLOR = (40, 200, 40)  # RGB green
PRED_COLOR = (255, 110, 0)  # RGB orange-red
TEXT_COLOR = (255, 255, 255)
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def to_rgb_uint8(image):
  """Any image [H,W], [H,W,1], [H,W,3] or [H,W,4] (uint8, or float in 0..255) -> uint8 [H,W,3]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Expected an image [H,W], [H,W,1], [H,W,3] or [H,W,4]; got {image.shape}.")
  if image.dtype != np.uint8:
    image = np.clip(np.round(image.astype(np.float32)), 0, 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return np.ascontiguousarray(image)


def _upscale(rgb, min_size):
  """Resizes so that the shorter side is >= `min_size` (integer factor); returns (image, factor)."""
  height, width = rgb.shape[:2]
  factor = max(1, int(math.ceil(min_size / max(1, min(height, width)))))
  if factor == 1:
    return rgb, 1
  return cv2.resize(rgb, (width * factor, height * factor), interpolation=cv2.INTER_LINEAR), factor


def _fixed(point):
  """Float `(x, y)` -> int tuple in cv2's `shift` fixed point."""
  return (int(round(float(point[0]) * _ONE)), int(round(float(point[1]) * _ONE)))


def _finite(points):
  return points is not None and np.all(np.isfinite(points))


def _text(canvas, text, org, color, scale, thickness=1):
  """Text with a dark outline so it reads on any background."""
  org = (int(round(org[0])), int(round(org[1])))
  cv2.putText(canvas, text, org, _FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
  cv2.putText(canvas, text, org, _FONT, scale, color, thickness, cv2.LINE_AA)


def _draw_landmarks(canvas, points, aop, color, scale, label_offset, arc_gain):
  """Rays PS1->PS2 and PS1->FH1, an arc at PS1 (radius times `arc_gain`), points and names."""
  ps1, ps2, fh1 = points
  thickness = max(1, int(round(scale)))
  radius = 4.0 * scale
  for end in (ps2, fh1):
    cv2.line(canvas, _fixed(ps1), _fixed(end), color, thickness, cv2.LINE_AA, _SHIFT)
  rays = [end - ps1 for end in (ps2, fh1)]
  lengths = [float(np.hypot(*r)) for r in rays]
  if aop is not None and math.isfinite(aop) and min(lengths) > 0:
    # Angles in image coordinates (y down); the arc runs the short way from one ray to the other.
    a1, a2 = (math.atan2(r[1], r[0]) for r in rays)
    sweep = (a2 - a1 + math.pi) % (2 * math.pi) - math.pi
    arc_r = arc_gain * max(12.0 * scale, min(0.4 * min(lengths), 44.0 * scale))
    ts = a1 + sweep * np.linspace(0.0, 1.0, 33)
    arc = np.stack([ps1[0] + arc_r * np.cos(ts), ps1[1] + arc_r * np.sin(ts)], axis=-1)
    cv2.polylines(canvas, [np.round(arc * _ONE).astype(np.int32)], False, color, thickness,
                  cv2.LINE_AA, _SHIFT)
    mid = a1 + 0.5 * sweep
    # Outer arcs write outside, inner arcs inside, so two angles do not overlap.
    text_r = arc_r + 8.0 * scale if arc_gain >= 1.0 else max(arc_r - 10.0 * scale, 0.0)
    text_at = ps1 + text_r * np.array([math.cos(mid), math.sin(mid)])
    _text(canvas, f"{aop:.1f}", (text_at[0] - 12 * scale, text_at[1] + 4 * scale), color,
          0.4 * scale)
  for name, point in zip(LANDMARK_NAMES, points):
    cv2.circle(canvas, _fixed(point), int(round(radius * _ONE)), color, -1, cv2.LINE_AA, _SHIFT)
    cv2.circle(canvas, _fixed(point), int(round(radius * _ONE)), (0, 0, 0), 1, cv2.LINE_AA,
               _SHIFT)
    _text(canvas, name, (point[0] + radius + 2, point[1] + label_offset * scale), color,
          0.4 * scale)


def overlay(image, pred=None, gt=None, aop_pred=None, aop_gt=None, title=None, min_size=512,
            names=("GT", "pred"), aop_pred_spread=None):
  """Draws ground-truth and predicted landmarks, the AoP rays, arc and angle on the image.

  Args:
    image: [H,W] / [H,W,1] / [H,W,3], uint8 or float 0..255.
    pred: optional [3,2] predicted `(x, y)`, pixels of `image`, order PS1, PS2, FH1 (orange).
    gt: optional [3,2] ground truth, same frame (green).
    aop_pred, aop_gt: AoP in degrees to write; computed from the points with `geometry.aop_deg`
      when None (pass the AoP of the original frame if `image` was resized non-uniformly).
    title: optional text written at the top left.
    min_size: the picture is upscaled by an integer factor until its shorter side is >= this.
    names: how the legend calls `gt` and `pred` (e.g. two annotations of one image).
    aop_pred_spread: an ensemble's AoP spread, degrees, written as "118.2 +/- 4.1 deg" (not
      where None or NaN).

  Returns:
    uint8 RGB [H*f, W*f, 3] with f the upscale factor.
  """
  rgb = to_rgb_uint8(image)
  height, width = rgb.shape[:2]
  canvas, factor = _upscale(rgb, min_size)
  canvas = canvas.copy()
  scale = canvas.shape[0] / 512.0 if canvas.shape[0] >= 512 else 1.0
  scale = max(1.0, min(scale, 3.0))
  lines = [] if title is None else [(title, TEXT_COLOR)]
  for name, points, aop, color, label_offset, arc_gain in (
      (names[0], gt, aop_gt, GT_COLOR, -4.0, 1.0),
      (names[1], pred, aop_pred, PRED_COLOR, 12.0, 0.6)):
    if points is None:
      continue
    points = np.asarray(points, np.float32).reshape(3, 2)
    if aop is None and _finite(points):
      aop = float(geometry.aop_deg(points))
    aop = None if aop is None else float(aop)
    shown = "undefined" if aop is None or not math.isfinite(aop) else f"{aop:.1f} deg"
    spread = aop_pred_spread if name == names[1] else None
    if spread is not None and math.isfinite(spread) and shown != "undefined":
      shown = f"{aop:.1f} +/- {spread:.1f} deg"
    lines.append((f"AoP {name}: {shown}", color))
    if not _finite(points):
      continue  # Nothing to draw; the text above says the AoP is undefined.
    mapped = geometry.rescale_points(points, (width, height), (canvas.shape[1], canvas.shape[0]))
    _draw_landmarks(canvas, mapped, aop, color, scale, label_offset, arc_gain)
  for i, (text, color) in enumerate(lines):
    _text(canvas, text, (10 * scale, (20 + 20 * i) * scale), color, 0.55 * scale)
  return canvas


def colorize(values, vmin=0.0, vmax=1.0, colormap=cv2.COLORMAP_JET):
  """float [H,W] -> uint8 RGB [H,W,3] via an OpenCV colormap, values clipped to [vmin, vmax]."""
  values = np.asarray(values, np.float32)
  span = max(vmax - vmin, 1e-12)
  levels = np.clip(np.round((values - vmin) / span * 255.0), 0, 255).astype(np.uint8)
  return cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)


def heatmap_panel(image, heatmaps, tile_px=256, alpha=0.65, names=LANDMARK_NAMES):
  """The image and each heatmap side by side (the paper's Figure 3).

  Each heatmap is colormapped on a fixed 0..1 scale (targets peak at 1, so tiles compare across
  epochs), blended over the image, and labelled with its landmark name and peak value.

  Args:
    image: [H,W] / [H,W,C], uint8 or float 0..255; stretched to the square tile like the model's
      input.
    heatmaps: float [R,R,K] (K = 3: PS1, PS2, FH1).
    tile_px: side of each tile, pixels.
    alpha: weight of the colormap over the image.
    names: channel names.

  Returns:
    uint8 RGB [tile_px, tile_px * (K + 1), 3].
  """
  heatmaps = np.asarray(heatmaps, np.float32)
  if heatmaps.ndim != 3:
    raise ValueError(f"heatmaps must be [R,R,K]; got {heatmaps.shape}.")
  size = (tile_px, tile_px)
  base = cv2.resize(to_rgb_uint8(image), size, interpolation=cv2.INTER_AREA
                    if min(np.shape(image)[:2]) > tile_px else cv2.INTER_LINEAR)
  scale = tile_px / 256.0
  tiles = [base.copy()]
  _text(tiles[0], "image", (6 * scale, 18 * scale), TEXT_COLOR, 0.5 * scale)
  for k in range(heatmaps.shape[-1]):
    channel = cv2.resize(heatmaps[..., k], size, interpolation=cv2.INTER_LINEAR)
    tile = cv2.addWeighted(colorize(channel), alpha, base, 1.0 - alpha, 0.0)
    name = names[k] if k < len(names) else f"ch{k}"
    _text(tile, f"{name}  peak {float(heatmaps[..., k].max()):.2f}", (6 * scale, 18 * scale),
          TEXT_COLOR, 0.5 * scale)
    tiles.append(tile)
  return np.concatenate(tiles, axis=1)


def save_png(path, rgb):
  """Writes a uint8 RGB [H,W,3] (or gray [H,W]) array as PNG, creating the folder."""
  rgb = np.asarray(rgb)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
  if not cv2.imwrite(path, bgr):
    raise OSError(f"Could not write {path}: check that the folder is writable and the name ends "
                  "in .png.")
