"""Semi-supervised training: a mean teacher teaches the student on unlabeled images.

Each step takes a labeled batch and an unlabeled one (`data.make_unlabeled_dataset`: a weak and a
strong view of each image, with the matrices that made them):

  1. The teacher (an exponential moving average of the student's weights, `ema_decay` per step)
     decodes its landmarks on the weak view (`codec.HeatmapCodec`).
  2. The pseudo-label filters (`aop_tf.pseudo`) judge them in the original image's frame; points the
     strong warp pushed off the image are dropped too.
  3. The landmarks move by the known transform from the weak view to the strong one and become
     Gaussian targets there (cells, rendered by the loss: `codec.HeatmapCodec.render`), so the
     target stays on the anatomy.
  4. The student learns the labeled batch (the run's losses) plus the unlabeled batch (the heatmap
     loss against those targets, kept examples only), the latter weighted by `unlabeled_weight`
     ramped up over `rampup_epochs`; then the teacher follows.

`MeanTeacher` is a Keras model holding both networks, so a checkpoint (`.keras`) carries student,
teacher and optimizer state and a resumed run continues exactly. It predicts with the student
while training (`call`); evaluation and export take `inference_network` (`semi.infer_with`, the
teacher by default) through `model_dir.load_model`. Epoch logs gain `supervised_loss`,
`unlabeled_loss`, `pseudo_kept` (the share of unlabeled images whose landmarks trained the student)
and `unlabeled_weight`; `loss` is their weighted sum.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from aop_tf import augment
from aop_tf import codec as codec_lib
from aop_tf import geometry
from aop_tf import losses
from aop_tf import model as model_lib
from aop_tf import pseudo


def ramp_weight(step, rampup_steps, weight):
  """`weight * exp(-5 (1 - t)^2)`, t = step / rampup_steps clipped to [0, 1] (Laine & Aila)."""
  if rampup_steps <= 0:
    return tf.constant(weight, tf.float32)
  t = tf.minimum(tf.cast(step, tf.float32) / float(rampup_steps), 1.0)
  return weight * tf.exp(-5.0 * tf.square(1.0 - t))


def ema_decay_at(step, decay):
  """The EMA decay at optimizer step `step` (1-based): `min(decay, (1 + step) / (10 + step))`, so
  the teacher follows the student closely while both are young (Tarvainen & Valpola)."""
  step = tf.cast(step, tf.float32)
  return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


@keras.saving.register_keras_serializable(package="aop_tf")
class MeanTeacher(keras.Model):
  """A student U-Net trained on labeled and unlabeled batches, and its EMA teacher.

  Args:
    model_kwargs: `model.build_unet` arguments of both networks (`RunSpec.model_kwargs()`).
    codec: dict of `codec.HeatmapCodec` fields (the teacher's decoding, the unlabeled targets).
    semi: dict of `config.SemiSpec` fields.
    heatmap_loss: dict of `losses.heatmap_loss` arguments (the unlabeled loss).
    rampup_steps: optimizer steps of the unlabeled weight's ramp-up.
  """

  def __init__(self, model_kwargs, codec, semi, heatmap_loss, rampup_steps, **kwargs):
    super().__init__(**kwargs)
    self._config = {"model_kwargs": dict(model_kwargs), "codec": dict(codec), "semi": dict(semi),
                    "heatmap_loss": dict(heatmap_loss), "rampup_steps": int(rampup_steps)}
    self.student = model_lib.build_unet(**model_kwargs, name="student")
    self.teacher = model_lib.build_unet(**model_kwargs, name="teacher")
    self.teacher.set_weights(self.student.get_weights())
    self.teacher.trainable = False
    self.codec = codec_lib.HeatmapCodec(**codec)
    self.semi = _Settings(semi)
    self.unlabeled_loss = losses.heatmap_loss(**heatmap_loss, codec=self.codec)
    self.rampup_steps = int(rampup_steps)
    self._supervised_tracker = keras.metrics.Mean(name="supervised_loss")
    self._unlabeled_tracker = keras.metrics.Mean(name="unlabeled_loss")
    self._kept_tracker = keras.metrics.Mean(name="pseudo_kept")
    self._weight_tracker = keras.metrics.Mean(name="unlabeled_weight")
    self.built = True  # both networks are built functional models

  def get_config(self):
    return {**super().get_config(), **self._config}

  @property
  def input_shape(self):
    return self.student.input_shape

  @property
  def networks(self):
    """{"teacher": ..., "student": ...}, the inference network first."""
    order = ("teacher", "student") if self.semi.infer_with == "teacher" else ("student", "teacher")
    return {name: getattr(self, name) for name in order}

  @property
  def inference_network(self):
    """The network evaluation and export use (`semi.infer_with`)."""
    return getattr(self, self.semi.infer_with)

  def call(self, inputs, training=False):
    return self.student(inputs, training=training)

  @property
  def metrics(self):
    return [*super().metrics, *self._semi_trackers()]

  def _semi_trackers(self):
    return (self._supervised_tracker, self._unlabeled_tracker, self._kept_tracker,
            self._weight_tracker)

  def pseudo_targets(self, unlabeled):
    """The teacher's targets on the strong views of an unlabeled batch, and which to keep."""
    return self.targets_from(self.teacher(unlabeled["weak"], training=False), unlabeled)

  def targets_from(self, teacher_outputs, unlabeled):
    """Targets on the strong views from the teacher's outputs on the weak views.

    Args:
      teacher_outputs: the teacher's output dict on `unlabeled["weak"]`.
      unlabeled: a batch of `data.make_unlabeled_dataset`.

    Returns:
      targets: float32 [B, 3, 2] the landmarks in cells of the strong view (the loss renders
        their Gaussians, `codec.HeatmapCodec.render`).
      keep: bool [B]: passed the filters and stayed on the image.
      landmarks: float32 [B, 3, 2] the teacher's landmarks in strong-view pixels.
    """
    size = float(self.codec.input_size)
    square = tf.constant([size, size])
    decoded = self.codec.decode(teacher_outputs, square)
    weak_to_input = tf.linalg.inv(unlabeled["weak_forward"])
    original = geometry.rescale_points(
        augment.transform_points(decoded["landmarks"], weak_to_input), square,
        unlabeled["size_px"][:, None, :])
    verdict = pseudo.verdicts(original, decoded["confidence"], unlabeled["size_px"], self.semi)
    strong = augment.transform_points(decoded["landmarks"],
                                      unlabeled["strong_forward"] @ weak_to_input)
    inside = tf.reduce_all(tf.logical_and(strong >= 0.0, strong <= size - 1.0), axis=[1, 2])
    keep = tf.logical_and(verdict["kept"], inside)
    return self.codec.to_cells(strong, square), keep, strong

  def unlabeled_per_image(self, targets, heatmaps):
    """The unlabeled loss per image [B] of the student's `heatmaps` [B, R, R, 3] against the
    teacher's `targets` [B, 3, 2] (cells), over the landmarks `--pseudo_landmarks` names."""
    which = pseudo.LANDMARK_SETS[self.semi.pseudo_landmarks]
    return self.unlabeled_loss.call(tf.gather(targets, which, axis=1),
                                    tf.gather(heatmaps, which, axis=-1))

  def train_step(self, data):
    (x, y), unlabeled = data["labeled"], data["unlabeled"]
    batch = tf.shape(x)[0]
    targets, keep, _ = self.pseudo_targets(unlabeled)
    weight = ramp_weight(self.optimizer.iterations, self.rampup_steps, self.semi.unlabeled_weight)
    with tf.GradientTape() as tape:
      out = self.student(tf.concat([x, unlabeled["strong"]], axis=0), training=True)
      y_pred = {key: value[:batch] for key, value in out.items()}
      supervised = self._compute_loss(x=x, y=y, y_pred=y_pred, training=True)
      per_image = self.unlabeled_per_image(targets, out["heatmaps"][batch:])
      unlabeled_loss = tf.reduce_mean(per_image * tf.cast(keep, per_image.dtype))
      loss = supervised + weight * unlabeled_loss
      self._loss_tracker.update_state(loss, sample_weight=batch)
      scaled = self.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, self.trainable_weights)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
    self.update_teacher()
    self._supervised_tracker.update_state(supervised)
    self._unlabeled_tracker.update_state(unlabeled_loss)
    self._kept_tracker.update_state(tf.reduce_mean(tf.cast(keep, tf.float32)))
    self._weight_tracker.update_state(weight)
    return self.compute_metrics(x, y, y_pred)

  def test_step(self, data):
    """The student's validation losses; the unlabeled trackers only mean something in training."""
    logs = super().test_step(data)
    training_only = {t.name for t in self._semi_trackers()}
    return {key: value for key, value in logs.items() if key not in training_only}

  def update_teacher(self):
    """teacher <- d * teacher + (1 - d) * student, every weight (batch-norm statistics too)."""
    decay = ema_decay_at(self.optimizer.iterations, self.semi.ema_decay)
    for t, s in zip(self.teacher.weights, self.student.weights):
      t.assign(decay * t + (1.0 - decay) * tf.cast(s, t.dtype))


class _Settings:
  """Attribute access to a dict of `config.SemiSpec` fields (what `pseudo.verdicts` reads)."""

  def __init__(self, fields):
    for key, value in fields.items():
      setattr(self, key, tuple(value) if isinstance(value, list) else value)


def build(spec, steps_per_epoch):
  """The `MeanTeacher` of a run spec (uncompiled)."""
  loss = spec.loss
  return MeanTeacher(
      model_kwargs=spec.model_kwargs(), codec=dataclasses.asdict(spec.heatmap_codec()),
      semi=dataclasses.asdict(spec.semi),
      heatmap_loss=dict(name=loss.loss, heatmap_scale=spec.codec.heatmap_scale,
                        foreground_weight=loss.foreground_weight,
                        coord_weight=loss.coord_loss_weight, aop_weight=loss.aop_loss_weight),
      rampup_steps=int(math.ceil(spec.semi.rampup_epochs * steps_per_epoch)), name="aop_semi")
