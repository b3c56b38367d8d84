"""The heatmap codec: landmarks in pixels <-> heatmaps in cells, in one object.

In the manner of MMPose's `MSRAHeatmap`: a `HeatmapCodec` owns every setting of the target
representation (input size, heatmap size, sigma, heatmap scale, decode method, blur, FH1 rule) and
exposes `encode(landmarks_px, size_px)` and `decode(outputs, size_px)`. Training targets,
validation, evaluation, TensorBoard, the SavedModel signatures and TFLite all hold the same codec,
built from the run spec (`config.RunSpec.codec()`), so the representation cannot drift between
them. This is the only module that puts together the pixel <-> cell mapping (`geometry`), Gaussian
rendering and peak finding (`heatmap`) and the FH1 tangent (`tangent`).

Coordinates: landmarks `(x, y)` in pixels of the image they belong to (pixel centres at integers),
order PS1, PS2, FH1; sizes `(width, height)`. Cell `i` of the R-cell map over S pixels is the pixel
point `(i + 0.5) * S / R - 0.5`. The model input covers the whole field of view, so a heatmap maps
straight onto the original image, whatever its size.

A codec is a value: its settings are read and compared without TensorFlow (the TFLite predictor
describes its decoding with them); `encode`, `render` and `decode` import TensorFlow when they run.
"""

import dataclasses

from aop_tf import geometry

# Heatmap peak decoders (`heatmap.decode_heatmaps`): the hottest cell, or DARK's sub-cell step.
DECODE_METHODS = ("argmax", "dark")
# What `decode` returns (and every export and predictor, in this order), and what it adds for an
# ensemble (`member_heatmaps` in the outputs); predictors give NaN there for one model.
OUTPUT_KEYS = ("landmarks", "aop_deg", "confidence", "heatmaps")
ENSEMBLE_KEYS = ("aop_spread_deg",)
# Where FH1 comes from: its own heatmap, or the tangent from the decoded PS1 to the predicted
# fetal-head region (the IUGC definition of FH1; needs a segmentation head).
FH1_METHODS = ("heatmap", "tangent")
# The head map is upsampled (bilinear) by this factor before the tangent search, so the tangent
# point is found on sub-cell boundaries; cells above this probability are head.
TANGENT_UPSAMPLE = 4
HEAD_THRESHOLD = 0.5


def heatmaps_of(outputs):
  """The heatmap tensor of a model output: a dict with "heatmaps", or the tensor itself."""
  if isinstance(outputs, dict):
    if "heatmaps" not in outputs:
      raise KeyError(f"Model outputs {sorted(outputs)} have no 'heatmaps'.")
    return outputs["heatmaps"]
  return outputs


def _per_example_size(size_px, batch):
  """`(width, height)` [2] or [B, 2] -> float32 [B, 2]."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  size = tf.cast(tf.convert_to_tensor(size_px), tf.float32)
  if len(size.shape) == 1:
    size = tf.broadcast_to(size[None], tf.stack([batch, 2]))
  return size


@dataclasses.dataclass(frozen=True)
class HeatmapCodec:
  """Gaussian heatmap targets and their decoding into landmarks, AoP and confidence.

  Args:
    input_size: side S of the square model input, pixels.
    heatmap_size: side R of the heatmaps, cells.
    sigma_cells: standard deviation of the target Gaussians, cells.
    heatmap_scale: amplitude the losses give the unit-peak targets; decoded confidences are divided
      by it, so a target-shaped output has confidence 1 whatever the scale.
    decode_method: "argmax" (hottest cell) or "dark" (sub-cell Newton step, `heatmap.decode_heatmaps`).
    blur_sigma_cells: "dark" only: Gaussian pre-blur of the outputs, cells (0: none).
    fh1_method: "heatmap" (FH1's own heatmap) or "tangent" (the tangent from PS1 to the predicted
      fetal head; needs the model's segmentation output).

  Usage:
    codec = HeatmapCodec(input_size=256, heatmap_size=64, sigma_cells=2.0)
    targets = codec.encode(landmarks_px, size_px)["heatmaps"]      # [B, 64, 64, 3]
    same = codec.render(codec.to_cells(landmarks_px, size_px))      # what the losses do
    decoded = codec.decode(model(images), size_px)["landmarks"]    # [B, 3, 2] pixels
  """
  input_size: int = 256
  heatmap_size: int = 64
  sigma_cells: float = 2.0
  heatmap_scale: float = 1.0
  decode_method: str = "dark"
  blur_sigma_cells: float = 0.0
  fh1_method: str = "heatmap"

  def __post_init__(self):
    if self.decode_method not in DECODE_METHODS:
      raise ValueError(f"Unknown decode method {self.decode_method!r}; expected one of "
                       f"{DECODE_METHODS}.")
    if self.fh1_method not in FH1_METHODS:
      raise ValueError(f"Unknown fh1_method {self.fh1_method!r}; expected one of {FH1_METHODS}.")
    for name in ("input_size", "heatmap_size", "sigma_cells", "heatmap_scale"):
      if not getattr(self, name) > 0:
        raise ValueError(f"HeatmapCodec.{name} = {getattr(self, name)} must be > 0.")
    if not self.blur_sigma_cells >= 0:
      raise ValueError(f"HeatmapCodec.blur_sigma_cells = {self.blur_sigma_cells} must be >= 0.")

  @property
  def cells(self):
    """`(width, height)` of the heatmaps, cells."""
    return (self.heatmap_size, self.heatmap_size)

  def to_cells(self, landmarks_px, size_px):
    """Pixels of an image of `size_px` `(width, height)` -> heatmap cells (float, sub-cell)."""
    return geometry.pixel_to_cell(landmarks_px, size_px, self.cells)

  def to_pixels(self, points_cells, size_px):
    """Heatmap cells -> pixels of an image of `size_px` `(width, height)`."""
    return geometry.cell_to_pixel(points_cells, self.cells, size_px)

  def encode(self, landmarks_px, size_px):
    """Training targets of landmarks.

    Args:
      landmarks_px: float [..., 3, 2] `(x, y)`, pixels of an image of `size_px`.
      size_px: `(width, height)` of that image: [2], or [..., 2] with one size per example.

    Returns:
      dict: `heatmaps` float32 [..., R, R, 3], unit-peak Gaussians of `sigma_cells` at the
      sub-cell positions (the losses scale them by `heatmap_scale`); `landmarks_cells` float32
      [..., 3, 2].
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    landmarks = tf.cast(tf.convert_to_tensor(landmarks_px), tf.float32)
    size = tf.cast(tf.convert_to_tensor(size_px), tf.float32)
    if len(size.shape) == len(landmarks.shape) - 1:  # one size per example
      size = size[..., None, :]
    cells = self.to_cells(landmarks, size)
    return {"heatmaps": self.render(cells), "landmarks_cells": cells}

  def render(self, landmarks_cells):
    """The Gaussian targets of landmarks given in cells: unit-peak float32 [..., R, R, 3].

    The second half of `encode`, on its own: the input pipeline yields cells (24 bytes per
    example), and the losses render the targets inside the training step with this, on whatever
    device trains (`losses`).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from aop_tf import heatmap  # pylint: disable=import-outside-toplevel
    return heatmap.gaussian_heatmaps(tf.cast(landmarks_cells, tf.float32), self.cells,
                                     self.sigma_cells)

  def decode(self, outputs, size_px):
    """Landmarks, AoP and confidence of a batch of model outputs.

    Args:
      outputs: the model's output dict (`heatmaps` [B, R, R, 3]; `segmentation` [B, R, R, C]
        probabilities, needed for `fh1_method="tangent"`), or a heatmap tensor.
      size_px: [B, 2] or [2] `(width, height)` of each original image, pixels.

    Returns:
      dict: `landmarks` float32 [B, 3, 2] original pixels; `aop_deg` float32 [B] (NaN where
      degenerate); `confidence` float32 [B, 3], heatmap peaks / `heatmap_scale`; `heatmaps`
      float32 [B, R, R, 3] as the model gave them; for an ensemble (`member_heatmaps`
      [B, M, R, R, 3] in `outputs`) also `aop_spread_deg` float32 [B], the standard deviation of
      the AoPs its members decode to (FH1 by heatmap).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from aop_tf import heatmap  # pylint: disable=import-outside-toplevel
    maps = tf.cast(heatmaps_of(outputs), tf.float32)
    points_cells, peak = heatmap.decode_heatmaps(maps, self.decode_method, self.blur_sigma_cells)
    size = _per_example_size(size_px, tf.shape(maps)[0])
    landmarks = self.to_pixels(points_cells, size[:, None, :])
    if self.fh1_method == "tangent":
      landmarks = self._tangent_fh1(outputs, landmarks, size)
    decoded = {"landmarks": landmarks, "aop_deg": geometry.aop_deg(landmarks),
               "confidence": peak / self.heatmap_scale, "heatmaps": maps}
    if isinstance(outputs, dict) and "member_heatmaps" in outputs:
      decoded["aop_spread_deg"] = self._aop_spread(outputs["member_heatmaps"], size)
    return decoded

  def _aop_spread(self, member_heatmaps, size):
    """Standard deviation over an ensemble's members of their decoded AoPs, [B]."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from aop_tf import heatmap  # pylint: disable=import-outside-toplevel
    members = tf.cast(member_heatmaps, tf.float32)  # [B, M, R, R, 3]
    shape = tf.shape(members)
    flat = tf.reshape(members, tf.concat([[-1], shape[2:]], axis=0))
    points_cells, _ = heatmap.decode_heatmaps(flat, self.decode_method, self.blur_sigma_cells)
    landmarks = self.to_pixels(points_cells, tf.repeat(size, shape[1], axis=0)[:, None, :])
    aops = tf.reshape(geometry.aop_deg(landmarks), shape[:2])
    return tf.math.reduce_std(aops, axis=1)

  def _tangent_fh1(self, outputs, landmarks, size):
    """`landmarks` with FH1 moved to the tangent point on the predicted head, where there is one."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from aop_tf import tangent  # pylint: disable=import-outside-toplevel
    if not isinstance(outputs, dict) or "segmentation" not in outputs:
      raise ValueError("fh1_method 'tangent' needs the model's 'segmentation' output.")
    head = tf.cast(outputs["segmentation"], tf.float32)
    head = head[..., tangent.HEAD_CLASS:tangent.HEAD_CLASS + 1]
    shape = tf.shape(head)
    fine = tf.stack([shape[1], shape[2]]) * TANGENT_UPSAMPLE
    head = tf.image.resize(head, fine, method="bilinear")[..., 0]  # [B, h, w]
    xs, ys = tf.meshgrid(tf.range(fine[1], dtype=tf.float32), tf.range(fine[0], dtype=tf.float32))
    grid_cells = tf.reshape(tf.stack([xs, ys], axis=-1), [1, -1, 2])
    candidates = geometry.cell_to_pixel(grid_cells, tf.cast(tf.reverse(fine, [0]), tf.float32),
                                        size[:, None, :])  # [B, h*w, 2]
    valid = tf.reshape(head, [shape[0], -1]) > HEAD_THRESHOLD
    fh1, found = tangent.tangent_point(landmarks[:, 0], landmarks[:, 1], candidates, valid)
    fh1 = tf.where(found[:, None], fh1, landmarks[:, 2])
    return tf.stack([landmarks[:, 0], landmarks[:, 1], fh1], axis=1)
