"""Training losses: heatmap regression (MSE and variants) and the optional segmentation loss.

The input pipeline yields the landmarks in heatmap cells, float32 [B, 3, 2]; each heatmap loss
renders its targets from them inside the training step (`codec.HeatmapCodec.render`, the one
encoder: unit-peak Gaussians [B, R, R, 3]), so the maps are made on the device that trains and never
cross from the host. A loss also takes rendered maps as `y_true` (rank 4) as they are. Every
heatmap loss multiplies the targets by `heatmap_scale` first (a larger amplitude gives the
foreground more weight against the mostly-zero background; decoding is scale invariant). Each loss
returns one value per example, the mean over cells and landmarks, which Keras then averages over
the batch: `mse` with scale 1 is exactly the paper's (PyTorch `MSELoss`, mean over all elements).

The classes are registered Keras serializables, so `.keras` checkpoints load with
`compile=True`; evaluation loads with `compile=False` and needs none of this.
"""

import dataclasses

import keras
import tensorflow as tf

from aop_tf import codec as codec_lib
from aop_tf import config
from aop_tf import geometry
from aop_tf import heatmap


class HeatmapLoss(keras.losses.Loss):
  """A loss on heatmaps whose `y_true` may be landmarks in cells, rendered here by `codec`.

  Args:
    codec: the run's `codec.HeatmapCodec` (or its fields as a dict, as `get_config` stores it);
      None: `y_true` must be rendered maps.
  """

  def __init__(self, codec=None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(codec, dict):
      codec = codec_lib.HeatmapCodec(**codec)
    self.codec = codec

  def targets(self, y_true):
    """float32 [B, R, R, 3] unit-peak targets of `y_true`: cells [B, 3, 2] or maps [B, R, R, 3]."""
    y_true = tf.cast(y_true, tf.float32)
    if len(y_true.shape) == 4:
      return y_true
    if self.codec is None:
      raise ValueError(f"{self.name}: landmarks in cells (shape {y_true.shape}) need a codec to "
                       "render their targets.")
    return self.codec.render(y_true)

  def get_config(self):
    codec = dataclasses.asdict(self.codec) if self.codec is not None else None
    return {**super().get_config(), "codec": codec}


@keras.saving.register_keras_serializable(package="aop_tf")
class HeatmapMSE(HeatmapLoss):
  """Mean squared error against `heatmap_scale * target`, optionally foreground weighted.

  The weight of a cell is `1 + foreground_weight * target` (target in 0..1), so cells near a
  landmark count up to `1 + foreground_weight` times more than the background; 0 gives plain MSE.

  Args:
    heatmap_scale: amplitude of the target peaks.
    foreground_weight: extra weight at the peak (>= 0).
  """

  def __init__(self, heatmap_scale=1.0, foreground_weight=0.0, name="heatmap_mse", **kwargs):
    super().__init__(name=name, **kwargs)
    self.heatmap_scale = float(heatmap_scale)
    self.foreground_weight = float(foreground_weight)

  def call(self, y_true, y_pred):
    y_true = self.targets(y_true)
    y_pred = tf.cast(y_pred, tf.float32)
    error = tf.square(y_pred - self.heatmap_scale * y_true)
    if self.foreground_weight:
      error = error * (1.0 + self.foreground_weight * y_true)
    return tf.reduce_mean(error, axis=[1, 2, 3])

  def get_config(self):
    return {**super().get_config(), "heatmap_scale": self.heatmap_scale,
            "foreground_weight": self.foreground_weight}


@keras.saving.register_keras_serializable(package="aop_tf")
class AdaptiveWingLoss(HeatmapLoss):
  """Adaptive Wing loss (Wang et al., ICCV 2019) with its weighted loss map.

  Per cell, with `y` the unit-peak target, `d = |pred - heatmap_scale * y|` and
  `p = alpha - y`: `omega * log(1 + (d / epsilon)**p)` for `d < theta`, else `A * d - C`, with `A`
  and `C` making the two pieces meet smoothly at `theta`. Near the peak (`y` ~ 1, `p` ~ 1.1) the
  loss is close to L1, which keeps pushing small foreground errors down; in the background
  (`p` ~ 2.1) it is close to L2 and forgiving. Cells within a 3x3 dilation of `y > 0.2` get weight
  `1 + map_weight` (the paper's W = 10).

  Args:
    heatmap_scale: amplitude of the target peaks (`theta`, `epsilon` are in those units).
    omega, theta, epsilon, alpha: the paper's defaults 14, 0.5, 1, 2.1.
    map_weight: extra weight of the dilated foreground; 0 disables the loss map.
  """

  def __init__(self, heatmap_scale=1.0, omega=14.0, theta=0.5, epsilon=1.0, alpha=2.1,
               map_weight=10.0, name="adaptive_wing", **kwargs):
    super().__init__(name=name, **kwargs)
    self.heatmap_scale = float(heatmap_scale)
    self.omega, self.theta = float(omega), float(theta)
    self.epsilon, self.alpha = float(epsilon), float(alpha)
    self.map_weight = float(map_weight)

  def call(self, y_true, y_pred):
    y = tf.clip_by_value(self.targets(y_true), 0.0, 1.0)
    diff = tf.abs(tf.cast(y_pred, tf.float32) - self.heatmap_scale * y)
    power = self.alpha - y
    ratio = self.theta / self.epsilon
    a = (self.omega * (1.0 / (1.0 + tf.pow(ratio, power))) * power
         * tf.pow(ratio, power - 1.0) / self.epsilon)
    c = self.theta * a - self.omega * tf.math.log1p(tf.pow(ratio, power))
    loss = tf.where(diff < self.theta,
                    self.omega * tf.math.log1p(tf.pow(diff / self.epsilon, power)),
                    a * diff - c)
    if self.map_weight:
      foreground = tf.nn.max_pool2d(tf.cast(y > 0.2, tf.float32), 3, 1, "SAME")
      loss = loss * (1.0 + self.map_weight * foreground)
    return tf.reduce_mean(loss, axis=[1, 2, 3])

  def get_config(self):
    return {**super().get_config(), "heatmap_scale": self.heatmap_scale, "omega": self.omega,
            "theta": self.theta, "epsilon": self.epsilon, "alpha": self.alpha,
            "map_weight": self.map_weight}


@keras.saving.register_keras_serializable(package="aop_tf")
class SpatialSoftmaxCE(HeatmapLoss):
  """Cross-entropy between heatmaps taken as distributions over cells, per landmark.

  The target Gaussian is normalised to sum 1 over the R*R cells; so is the prediction (the output
  of a spatial-softmax head, whatever its peak scale). Unlike MSE, whose all-zero solution is a
  deep basin that sparse targets take epochs to leave, every cell gets a gradient from the first
  step. The optimum is the target distribution itself, so the predicted map is Gaussian-shaped
  around the landmark and DARK decoding applies unchanged.

  Optional geometric terms on the expected positions (`heatmap.soft_argmax`, cells) of prediction
  and target, which the cross-entropy's optimum leaves unchanged:
  `coord_weight` * mean Euclidean distance over the landmarks (cells), and `aop_weight` * the
  absolute AoP difference (degrees; `geometry.aop_deg`, which is the same in cells and pixels).

  Args:
    coord_weight: weight of the coordinate term (>= 0).
    aop_weight: weight of the AoP term (>= 0).
  """

  def __init__(self, coord_weight=0.0, aop_weight=0.0, name="softmax_ce", **kwargs):
    super().__init__(name=name, **kwargs)
    self.coord_weight = float(coord_weight)
    self.aop_weight = float(aop_weight)

  def call(self, y_true, y_pred):
    y_true = self.targets(y_true)
    y_pred = tf.cast(y_pred, tf.float32)
    target = y_true / tf.maximum(tf.reduce_sum(y_true, axis=[1, 2], keepdims=True), 1e-12)
    prob = y_pred / tf.maximum(tf.reduce_sum(y_pred, axis=[1, 2], keepdims=True), 1e-12)
    ce = -tf.reduce_sum(target * tf.math.log(tf.maximum(prob, 1e-12)), axis=[1, 2])  # [B, K]
    loss = tf.reduce_mean(ce, axis=-1)
    if not (self.coord_weight or self.aop_weight):
      return loss
    true_xy = heatmap.soft_argmax(target)  # [B, K, 2] cells
    pred_xy = heatmap.soft_argmax(prob)
    if self.coord_weight:
      dist = tf.sqrt(tf.reduce_sum(tf.square(pred_xy - true_xy), axis=-1) + 1e-8)
      loss += self.coord_weight * tf.reduce_mean(dist, axis=-1)
    if self.aop_weight:
      pred_aop, true_aop = geometry.aop_deg(pred_xy), geometry.aop_deg(true_xy)
      # Degenerate (NaN) angles, e.g. an all-zero dummy target, contribute nothing, and no NaN
      # gradient either (both sides are replaced before the difference).
      valid = tf.logical_and(tf.math.is_finite(pred_aop), tf.math.is_finite(true_aop))
      zeros = tf.zeros_like(pred_aop)
      loss += self.aop_weight * tf.abs(tf.where(valid, pred_aop, zeros) -
                                       tf.where(valid, true_aop, zeros))
    return loss

  def get_config(self):
    return {**super().get_config(), "coord_weight": self.coord_weight,
            "aop_weight": self.aop_weight}


@keras.saving.register_keras_serializable(package="aop_tf")
class MaskedSegmentationLoss(keras.losses.Loss):
  """Cross-entropy of softmax probabilities [B,R,R,C] against int labels [B,R,R].

  Labels < 0 are ignored (the training loop sets the whole mask to -1 for images without a real
  mask), so such images contribute 0. Returns the per-example mean over labelled cells.
  """

  def __init__(self, name="masked_segmentation", **kwargs):
    super().__init__(name=name, **kwargs)

  def call(self, y_true, y_pred):
    labels = tf.cast(y_true, tf.int32)
    if len(labels.shape) == 4:
      labels = labels[..., 0]
    valid = labels >= 0
    probs = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-7, 1.0)
    picked = tf.gather(probs, tf.maximum(labels, 0), batch_dims=3)
    nll = -tf.math.log(picked) * tf.cast(valid, tf.float32)
    count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=[1, 2])
    return tf.reduce_sum(nll, axis=[1, 2]) / tf.maximum(count, 1.0)


def heatmap_loss(name, heatmap_scale=1.0, foreground_weight=10.0, coord_weight=0.0,
                 aop_weight=0.0, codec=None):
  """The heatmap loss called `name` (one of `config.HEATMAP_LOSSES`).

  Args:
    name: "mse" (the paper), "weighted_mse" (`HeatmapMSE` with `foreground_weight`), "awing" or
      "softmax_ce" (`SpatialSoftmaxCE`; needs the spatial-softmax head).
    heatmap_scale: target amplitude multiplier.
    foreground_weight: for "weighted_mse", the extra weight at the peaks.
    coord_weight, aop_weight: for "softmax_ce", its soft-argmax coordinate (cells) and AoP
      (degrees) terms; other losses need both 0.
    codec: the `codec.HeatmapCodec` that renders targets from landmarks in cells (see
      `HeatmapLoss`); None: the loss takes rendered maps only.
  """
  if name not in config.SOFTMAX_LOSSES and (coord_weight or aop_weight):
    raise ValueError(f"The coordinate/AoP loss terms need a softmax loss {config.SOFTMAX_LOSSES}; "
                     f"got {name!r}.")
  if coord_weight < 0 or aop_weight < 0:
    raise ValueError(f"coord_weight {coord_weight} and aop_weight {aop_weight} must be >= 0.")
  if name == "mse":
    return HeatmapMSE(heatmap_scale, 0.0, name="mse", codec=codec)
  if name == "weighted_mse":
    if foreground_weight <= 0:
      raise ValueError(f"weighted_mse needs foreground_weight > 0; got {foreground_weight}.")
    return HeatmapMSE(heatmap_scale, foreground_weight, name="weighted_mse", codec=codec)
  if name == "awing":
    return AdaptiveWingLoss(heatmap_scale, codec=codec)
  if name == "softmax_ce":
    return SpatialSoftmaxCE(coord_weight, aop_weight, codec=codec)
  raise ValueError(f"Unknown loss {name!r}; expected one of {', '.join(config.HEATMAP_LOSSES)}.")
