"""The run spec: every knob of a training run, typed, documented and checked in one place.

A `RunSpec` nests frozen sections: `model` (the network), `codec` (heatmap targets and their
decoding), `loss`, `data`, `augment`, `optim` (optimizer and schedule), `semi` (the mean teacher
on unlabeled images) and `run` (where, how long, how loud). Everything else derives from it:

  - the flags of `python -m aop_tf.train`: one per field, named like the field (`aug_` before the
    augmentation fields), typed by it, its help the field's line in the section's docstring
    (`define_flags`, `from_flags`);
  - `config.json` of a training directory: `to_json` writes it, `from_json` reads it back for
    training, resume, evaluation, export and predict (through `model_dir.read_spec`);
  - what may change when a run is resumed: fields marked `resumable` (`check_resumable`).

Adding a knob: add a field with its default and a docstring line to its section, use it where it
acts, and name it in every flagfile (`aop_tf/configs/*.cfg`; tests/test_config.py checks that each
names every knob). A config.json written before the field existed reads it at its default, which
must therefore keep the old behaviour.

Library use: `RunSpec().replace(input_size=64, heatmap_size=16, data_dir="d", model_dir="m")`.
"""

import dataclasses
import json
import math

from absl import flags

from aop_tf import codec as codec_lib
from aop_tf import pseudo as pseudo_lib
from aop_tf.knobs import ConfigError, field_docs  # noqa: F401  (re-exported)

FORMAT = 2  # config.json layout: {"format": 2, "<section>": {field: value}}
# The run spec's file in a training directory (`model_dir.write_spec` / `read_spec`).
CONFIG_FILE = "config.json"

# The choices of the knobs that name an implementation, beside the knobs: a run spec is read and
# checked without TensorFlow (the TFLite predictor reads the one an export records). The modules
# that implement them check their arguments against these.
NORMS = ("batch", "group", "none")  # model.build_unet
HEATMAP_LOSSES = ("mse", "weighted_mse", "awing", "softmax_ce")  # losses.heatmap_loss
# Losses that need the model's spatial-softmax heatmap head (`build_unet(heatmap_activation=...)`).
SOFTMAX_LOSSES = ("softmax_ce",)
OPTIMIZERS = ("adam", "adamw")  # optim.make_optimizer
LR_SCHEDULES = ("step", "cosine", "constant")  # optim
STRATEGIES = ("none", "mirrored", "multi_worker")  # distribute.make_strategy
LR_SCALINGS = ("linear", "sqrt", "none")  # distribute.scaled_spec


def knob(default, *, choices=None, check=None, resumable=False):
  """A spec field. `check`: "positive" (> 0), "non_negative" (>= 0), "unit" (in [0, 1]) or
  "range" (a `(min, max)` pair with 0 < min <= max); `resumable`: may change on resume."""
  return dataclasses.field(default=default, metadata={
      "choices": choices, "check": check, "resumable": resumable})


_CHECKS = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "unit": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "range": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "needs 0 < min <= max"),
}


def _coerce(value, kind, flag):
  """`value` as the field type `kind` (JSON gives lists for tuples, ints for floats)."""
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if kind is tuple and isinstance(value, (list, tuple)):
    try:
      return tuple(float(v) for v in value)
    except (TypeError, ValueError):
      raise ConfigError(f"--{flag}={value!r}: expected numbers min,max.") from None
  if kind is int and isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
    return value
  raise ConfigError(f"--{flag}={value!r}: expected {'min,max' if kind is tuple else kind.__name__}.")


class _Section:
  """Base of the spec sections: type coercion and the per-field checks of `knob` metadata."""
  PREFIX = ""

  def __post_init__(self):
    for field in dataclasses.fields(self):
      flag = self.PREFIX + field.name
      value = _coerce(getattr(self, field.name), field.type, flag)
      object.__setattr__(self, field.name, value)
      choices, check = field.metadata.get("choices"), field.metadata.get("check")
      if choices is not None and value not in choices:
        raise ConfigError(f"--{flag}={value!r} is not one of {', '.join(map(str, choices))}.")
      if check is not None and not _CHECKS[check][0](value):
        raise ConfigError(f"--{flag}={value!r} {_CHECKS[check][1]}.")
    self.check()

  def check(self):
    """Checks between the fields of one section; raises ConfigError."""


def decoder_blocks(input_size, heatmap_size, depth, decode_to_full):
  """Number of decoder blocks of `model.build_unet`: all `depth` of them, or up to the heatmap
  resolution only; ValueError where the sizes do not allow that."""
  if decode_to_full:
    return depth
  stride = input_size // heatmap_size
  if stride * heatmap_size != input_size or stride & (stride - 1):
    raise ValueError(f"input_size {input_size} must be a power-of-two multiple of heatmap_size "
                     f"{heatmap_size} when the decoder stops at the heatmap resolution.")
  blocks = depth - int(math.log2(stride))
  if blocks < 0:
    raise ValueError(f"depth {depth} is too shallow for output stride {stride}.")
  return blocks


@dataclasses.dataclass(frozen=True)
class ModelSpec(_Section):
  """The network (`model.build_unet`).

  Attributes:
    input_size: Model input side S, pixels (a multiple of 2**depth).
    input_channels: Model input channels: 1 (gray) or 3 (gray replicated to RGB).
    base_filters: Channels of the first encoder block (block i has base * 2**i).
    depth: Encoder (pooling) blocks.
    heatmap_size: Heatmap side R, cells.
    decode_to_full: Decode back to S and resize to R (the paper); false stops the decoder at R.
    norm: Normalisation layers.
    seg_classes: Segmentation head classes (0: none; 3: bg, PS, FH, trained where the dataset has
      masks).
    mixed_precision: Train in bfloat16 compute with float32 variables (cpu.cfg epochs 1.34x faster
      on an AVX512-BF16 CPU); evaluation and export run float32.
    dropout: Spatial dropout rate after the bottleneck and each decoder block, training only (a
      noisy student's model noise); 0 adds no layer.
  """
  input_size: int = knob(256, check="positive")
  input_channels: int = knob(1, choices=(1, 3))
  base_filters: int = knob(16, check="positive")
  depth: int = knob(4, check="positive")
  heatmap_size: int = knob(64, check="positive")
  decode_to_full: bool = knob(False)
  norm: str = knob("batch", choices=NORMS)
  seg_classes: int = knob(0, check="non_negative")
  mixed_precision: bool = knob(False)
  dropout: float = knob(0.0, check="unit")

  def check(self):
    if self.dropout >= 1:
      raise ConfigError(f"--dropout={self.dropout} must be below 1.")
    if self.input_size % 2 ** self.depth:
      raise ConfigError(f"--input_size={self.input_size} must be a multiple of 2**depth = "
                        f"{2 ** self.depth}.")
    try:
      decoder_blocks(self.input_size, self.heatmap_size, self.depth,
                               self.decode_to_full)
    except ValueError as e:
      raise ConfigError(f"--input_size/--heatmap_size/--depth: {e}") from None


@dataclasses.dataclass(frozen=True)
class CodecSpec(_Section):
  """Heatmap targets and their decoding (`codec.HeatmapCodec`; sizes come from the model).

  Attributes:
    sigma_cells: Gaussian target sigma, heatmap cells.
    heatmap_scale: Target peak amplitude the heatmap losses regress (mse, weighted_mse, awing);
      confidences are divided by it. softmax_ce normalises its targets: leave it 1 there.
    decode_method: Heatmap peak decoding (validation, evaluation, export).
    decode_blur_sigma: dark: pre-blur sigma of the predicted heatmaps, cells.
    fh1_method: FH1 from its heatmap, or the tangent from PS1 to the predicted fetal head (needs
      --seg_classes=3).
  """
  sigma_cells: float = knob(2.0, check="positive")
  heatmap_scale: float = knob(1.0, check="positive")
  decode_method: str = knob("argmax", choices=codec_lib.DECODE_METHODS, resumable=True)
  decode_blur_sigma: float = knob(0.0, check="non_negative", resumable=True)
  fh1_method: str = knob("heatmap", choices=codec_lib.FH1_METHODS, resumable=True)


@dataclasses.dataclass(frozen=True)
class LossSpec(_Section):
  """The training loss (`losses`).

  Attributes:
    loss: Heatmap loss.
    foreground_weight: weighted_mse: extra weight at the peaks.
    seg_loss_weight: Weight of the segmentation loss.
    coord_loss_weight: softmax_ce: weight of the soft-argmax coordinate term (mean landmark
      distance, heatmap cells).
    aop_loss_weight: softmax_ce: weight of the soft-argmax AoP term (absolute AoP difference,
      degrees; needs square images).
  """
  loss: str = knob("mse", choices=HEATMAP_LOSSES)
  foreground_weight: float = knob(10.0, check="non_negative")
  seg_loss_weight: float = knob(1.0, check="non_negative")
  coord_loss_weight: float = knob(0.0, check="non_negative")
  aop_loss_weight: float = knob(0.0, check="non_negative")


@dataclasses.dataclass(frozen=True)
class DataSpec(_Section):
  """Where the examples come from and how they are batched (`data.make_dataset`).

  Attributes:
    data_dir: Dataset folder written by `python -m data_prep.build` (the folder with
      dataset_info.json, or one above it).
    train_split: Training split.
    val_split: Validation split; empty: no validation.
    cache: Cache decoded, resized examples in memory (4 x input_size^2 x channels bytes each);
      --nocache streams the shards every epoch, for splits larger than memory (31k images at 512).
    shuffle_buffer: 0: shuffle the whole split each epoch (held in memory); n: shuffle within
      blocks of n examples (what a streamed split needs).
    batch_size: Examples per training step.
    augment: Augment training images (knobs: --aug_*).
  """
  data_dir: str = knob("", resumable=True)
  train_split: str = knob("train")
  val_split: str = knob("val")
  cache: bool = knob(True, resumable=True)
  shuffle_buffer: int = knob(0, check="non_negative")
  batch_size: int = knob(4, check="positive")
  augment: bool = knob(False)


@dataclasses.dataclass(frozen=True)
class AugmentSpec(_Section):
  """Landmark-aware augmentation (`augment.augment`); mild, anatomy-preserving defaults (no flips:
  PS1/PS2 are ordered). Order: warp, erase, intensity.

  Attributes:
    affine_prob: Probability of warping an example (else the identity).
    rotation_deg: Rotation about the image centre, uniform in [-r, r], degrees.
    scale_range: Isotropic zoom min,max, log-uniform (> 1 enlarges the anatomy).
    translate_frac: Shift per axis, uniform in [-t, t] times the image side.
    keep_landmarks_inside: Redraw the warp (up to max_tries times, then the identity) when a
      landmark would leave the image.
    max_tries: Warps drawn per example when keep_landmarks_inside.
    intensity_prob: Probability of the intensity changes (drawn once per example).
    brightness: Additive shift, uniform in [-b, b] times 255.
    contrast: Factor about the image mean, uniform in [1 - c, 1 + c].
    gamma_range: Gamma min,max on 0..1-scaled intensities, log-uniform.
    noise_std: Standard deviation of additive Gaussian noise, grey levels (0..255).
    fill_value: Grey level outside the warped image (ultrasound background is black) and of
      erased boxes.
    erase_prob: Probability of blanking boxes of an example (random erasing, like an acoustic
      shadow; 0: off). Boxes may cover landmarks. The intensity changes apply to the boxes too,
      as a scanner's gain and speckle apply inside a shadow.
    erase_boxes: At most this many boxes per erased example (uniform in 1..n).
    erase_area_range: Area min,max of one box as a fraction of the image, log-uniform.
    erase_aspect_range: Width/height min,max of a box, log-uniform.
  """
  PREFIX = "aug_"
  affine_prob: float = knob(0.8, check="unit")
  rotation_deg: float = knob(10.0)
  scale_range: tuple = knob((0.9, 1.1), check="range")
  translate_frac: float = knob(0.05)
  keep_landmarks_inside: bool = knob(True)
  max_tries: int = knob(4, check="positive")
  intensity_prob: float = knob(0.8, check="unit")
  brightness: float = knob(0.1)
  contrast: float = knob(0.2)
  gamma_range: tuple = knob((0.8, 1.25), check="range")
  noise_std: float = knob(3.0, check="non_negative")
  fill_value: float = knob(0.0)
  erase_prob: float = knob(0.0, check="unit")
  erase_boxes: int = knob(1, check="positive")
  erase_area_range: tuple = knob((0.02, 0.1), check="range")
  erase_aspect_range: tuple = knob((0.5, 2.0), check="range")

  def check(self):
    if self.erase_area_range[1] > 1.0:
      raise ConfigError(f"--aug_erase_area_range={self.erase_area_range}: a box cannot cover more "
                        "than the image (max <= 1).")


@dataclasses.dataclass(frozen=True)
class OptimSpec(_Section):
  """Optimizer and learning-rate schedule (`optim`).

  Attributes:
    optimizer: Optimizer (weight decay decoupled).
    learning_rate: Peak learning rate.
    weight_decay: Decoupled weight decay; 0 disables it.
    lr_schedule: Learning-rate schedule.
    lr_step_epochs: step schedule: epochs per step.
    lr_step_factor: step schedule: factor per step.
    warmup_epochs: Linear learning-rate warm-up, epochs.
    clip_norm: Clip each gradient to this L2 norm (0: no clipping), against the rare huge step
      that diverges a bfloat16 run.
    epochs: Total epochs.
    steps_per_epoch: Steps per epoch; 0: one pass over the training split (other values for smoke
      tests only: resume is exact with full epochs).
    lr_scaling: How the learning rate follows the global batch of several replicas (batch_size x
      replicas): linear (x replicas, Goyal et al. 2017; keep a warm-up), sqrt, or none.
  """
  optimizer: str = knob("adam", choices=OPTIMIZERS)
  learning_rate: float = knob(1e-4, check="positive", resumable=True)
  weight_decay: float = knob(1e-4, check="non_negative")
  lr_schedule: str = knob("step", choices=LR_SCHEDULES, resumable=True)
  lr_step_epochs: int = knob(15, check="positive", resumable=True)
  lr_step_factor: float = knob(0.5, check="positive", resumable=True)
  warmup_epochs: float = knob(0.0, check="non_negative", resumable=True)
  clip_norm: float = knob(0.0, check="non_negative")
  epochs: int = knob(150, check="positive", resumable=True)
  steps_per_epoch: int = knob(0, check="non_negative")
  lr_scaling: str = knob("linear", choices=LR_SCALINGS, resumable=True)


@dataclasses.dataclass(frozen=True)
class SemiSpec(_Section):
  """Semi-supervised training on unlabeled images with a mean teacher (`semi`); off while
  `unlabeled_split` is empty. The pseudo-label filters' defaults were measured on PSFHS train
  (benchmarks/RESULTS.md, issue 16): symphysis 75-187 px (512 space), AoP 58-180 deg, and FH1 on
  the clockwise side of PS1->PS2 (836 of 838 images).

  Attributes:
    unlabeled_split: Split of --data_dir with unlabeled images (e.g. unlabeled); empty: supervised.
    unlabeled_batch_size: Unlabeled images per training step, beside --batch_size labeled ones.
    unlabeled_weight: Weight of the unlabeled loss once ramped up.
    rampup_epochs: Epochs over which the unlabeled weight ramps up (sigmoid-shaped) from 0.
    ema_decay: Teacher = EMA of the student's weights with this decay per step.
    infer_with: Which network a checkpoint predicts with (evaluation, export): the EMA teacher or
      the student.
    weak_rotation_deg: Teacher's view: rotation, uniform in [-r, r], degrees (no intensity change).
    weak_scale_range: Teacher's view: zoom min,max, log-uniform.
    weak_translate_frac: Teacher's view: shift per axis, fraction of the side.
    pseudo_min_confidence: A teacher landmark counts only if each of the three peaks reaches this
      (peak / heatmap_scale).
    pseudo_ps_length_512: Pubic symphysis length min,max in 512 space, px; outside: dropped.
    pseudo_aop_range_deg: Teacher AoP min,max, degrees; outside: dropped.
    pseudo_head_side: Drop landmarks whose FH1 lies on the other side of PS1->PS2 than the head.
    pseudo_landmarks: Which teacher landmarks train the student: all three, or the symphysis ends
      only (PS1, PS2; FH1, which slides along the head contour, is the teacher's weakest).
  """
  unlabeled_split: str = knob("")
  unlabeled_batch_size: int = knob(8, check="positive")
  unlabeled_weight: float = knob(1.0, check="non_negative")
  rampup_epochs: float = knob(10.0, check="non_negative")
  ema_decay: float = knob(0.99, check="unit")
  infer_with: str = knob("teacher", choices=("teacher", "student"), resumable=True)
  weak_rotation_deg: float = knob(5.0, check="non_negative")
  weak_scale_range: tuple = knob((0.95, 1.05), check="range")
  weak_translate_frac: float = knob(0.03, check="non_negative")
  pseudo_min_confidence: float = knob(0.3, check="non_negative")
  pseudo_ps_length_512: tuple = knob((70.0, 200.0), check="range")
  pseudo_aop_range_deg: tuple = knob((55.0, 180.0), check="range")
  pseudo_head_side: bool = knob(True)
  pseudo_landmarks: str = knob("all", choices=tuple(pseudo_lib.LANDMARK_SETS))


@dataclasses.dataclass(frozen=True)
class DistillSpec(_Section):
  """Knowledge distillation (`distill`): the student learns a teacher's heatmaps on augmented
  views of the train images (moved with the image's warp), blended with the real labels'
  Gaussians; off while `teacher` is empty. Needs --loss=softmax_ce (the targets are
  distributions).

  Attributes:
    teacher: Model whose heatmaps teach: a shipped name (psfhs_ensemble), a training directory
      (its last checkpoint), a SavedModel folder or a .tflite file; empty: no distillation.
    teacher_weight: Share of the teacher's heatmap in each target distribution (the label's
      Gaussian has the rest); 1: the teacher alone.
  """
  teacher: str = knob("")
  teacher_weight: float = knob(0.5, check="unit")


@dataclasses.dataclass(frozen=True)
class RunOptions(_Section):
  """Where a run writes, how long it trains, what it logs.

  Attributes:
    model_dir: Training directory (created; resumed if it holds latest.keras).
    resume: Continue a model dir that holds latest.keras.
    init_from: Weights to start a new run from (fine-tuning): a shipped model's name, a training
      directory or a .keras / .weights.h5 file; the architecture must match. Empty: random.
    checkpoint_every: epoch_NNNN.keras every N epochs; 0: none.
    val_every: Validate every N epochs (and at the end).
    num_tb_images: Validation images shown in TensorBoard.
    seed: Random seed (weights, shuffling, augmentation).
    jit_compile: XLA-compile the train step.
    max_train_minutes: Stop after the epoch in which this much training time (all resumed runs
      together) is spent; 0: no limit.
    verbose: Keras verbosity: 1 progress bar, 2 one line per epoch, -1 bar on a terminal, lines
      otherwise.
    distribute: none (one device), mirrored (all local GPUs, else all logical CPUs) or
      multi_worker (the hosts of TF_CONFIG); batch_size is per replica (`aop_tf.distribute`).
  """
  model_dir: str = knob("", resumable=True)
  resume: bool = knob(True, resumable=True)
  init_from: str = knob("", resumable=True)
  checkpoint_every: int = knob(50, check="non_negative", resumable=True)
  val_every: int = knob(1, check="positive", resumable=True)
  num_tb_images: int = knob(4, check="non_negative", resumable=True)
  seed: int = knob(42)
  jit_compile: bool = knob(False, resumable=True)
  max_train_minutes: float = knob(0.0, check="non_negative", resumable=True)
  verbose: int = knob(-1, choices=(-1, 0, 1, 2), resumable=True)
  distribute: str = knob("none", choices=STRATEGIES, resumable=True)


SECTIONS = {"model": ModelSpec, "codec": CodecSpec, "loss": LossSpec, "data": DataSpec,
            "augment": AugmentSpec, "optim": OptimSpec, "semi": SemiSpec, "distill": DistillSpec,
            "run": RunOptions}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Every knob of a run, by section (see the module docstring). Defaults: the paper's recipe on
  the CPU-sized model. Checks between sections run on construction (ConfigError)."""
  model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
  codec: CodecSpec = dataclasses.field(default_factory=CodecSpec)
  loss: LossSpec = dataclasses.field(default_factory=LossSpec)
  data: DataSpec = dataclasses.field(default_factory=DataSpec)
  augment: AugmentSpec = dataclasses.field(default_factory=AugmentSpec)
  optim: OptimSpec = dataclasses.field(default_factory=OptimSpec)
  semi: SemiSpec = dataclasses.field(default_factory=SemiSpec)
  distill: DistillSpec = dataclasses.field(default_factory=DistillSpec)
  run: RunOptions = dataclasses.field(default_factory=RunOptions)

  def __post_init__(self):
    softmax = self.loss.loss in SOFTMAX_LOSSES
    if (self.loss.coord_loss_weight or self.loss.aop_loss_weight) and not softmax:
      raise ConfigError(f"--coord_loss_weight/--aop_loss_weight need --loss in "
                        f"{SOFTMAX_LOSSES}; got --loss={self.loss.loss}.")
    if self.loss.loss == "weighted_mse" and self.loss.foreground_weight <= 0:
      raise ConfigError("--loss=weighted_mse needs --foreground_weight > 0.")
    if softmax and self.codec.heatmap_scale != 1.0:
      raise ConfigError(f"--heatmap_scale={self.codec.heatmap_scale:g}: --loss={self.loss.loss} "
                        "normalises its targets and its head peaks at about 1; use 1.")
    if self.run.distribute != "none" and self.semi.unlabeled_split:
      raise ConfigError(f"--distribute={self.run.distribute} with --unlabeled_split is not "
                        "supported yet (see aop_tf/distribute.py); train the mean teacher with "
                        "--distribute=none.")
    if self.distill.teacher and not softmax:
      raise ConfigError(f"--teacher needs --loss in {SOFTMAX_LOSSES} (its targets are "
                        f"distributions); got --loss={self.loss.loss}.")
    if self.codec.fh1_method == "tangent" and self.model.seg_classes <= 2:
      raise ConfigError("--fh1_method=tangent needs a segmentation head with the fetal-head class "
                        f"(--seg_classes=3); got --seg_classes={self.model.seg_classes}.")

  def flags(self):
    """{flag name: value} of every knob."""
    return {flag: getattr(getattr(self, section), name)
            for flag, (section, name) in _flag_table().items()}

  def replace(self, **changes):
    """A copy with knobs changed, named by their flags (`input_size=64, aug_rotation_deg=5`)."""
    table = _flag_table()
    unknown = sorted(set(changes) - set(table))
    if unknown:
      raise ConfigError(f"Unknown knobs {unknown}; see `python -m aop_tf.train --helpfull`.")
    by_section = {}
    for flag, value in changes.items():
      section, name = table[flag]
      by_section.setdefault(section, {})[name] = value
    return dataclasses.replace(self, **{
        section: dataclasses.replace(getattr(self, section), **fields)
        for section, fields in by_section.items()})

  def model_kwargs(self):
    """`model.build_unet` keyword arguments. A softmax loss gets the spatial-softmax head, scaled
    by 2 pi sigma^2 so that a target-shaped output peaks at about 1 (confidence 1)."""
    kwargs = dataclasses.asdict(self.model)
    kwargs["sync_batch_norm"] = self.run.distribute != "none"
    if self.loss.loss in SOFTMAX_LOSSES:
      kwargs["heatmap_activation"] = "spatial_softmax"
      kwargs["softmax_peak_scale"] = 2.0 * math.pi * self.codec.sigma_cells ** 2
    return kwargs

  def heatmap_codec(self):
    """The `codec.HeatmapCodec` of this run."""
    c = self.codec
    return codec_lib.HeatmapCodec(
        input_size=self.model.input_size, heatmap_size=self.model.heatmap_size,
        sigma_cells=c.sigma_cells, heatmap_scale=c.heatmap_scale, decode_method=c.decode_method,
        blur_sigma_cells=c.decode_blur_sigma, fh1_method=c.fh1_method)

  def augment_or_none(self):
    """The `AugmentSpec` when `data.augment` is on, else None."""
    return self.augment if self.data.augment else None

  def weak_augment(self):
    """The `AugmentSpec` of the teacher's view of an unlabeled image: a mild warp only."""
    s = self.semi
    return AugmentSpec(affine_prob=1.0, rotation_deg=s.weak_rotation_deg,
                       scale_range=s.weak_scale_range, translate_frac=s.weak_translate_frac,
                       keep_landmarks_inside=False, intensity_prob=0.0, erase_prob=0.0,
                       fill_value=self.augment.fill_value)


def _flag_table():
  """{flag name: (section, field name)} over every section, in declaration order."""
  table = {}
  for section, cls in SECTIONS.items():
    for field in dataclasses.fields(cls):
      table[cls.PREFIX + field.name] = (section, field.name)
  return table


# ------------------------------------------------------------------------------------------------
# Flags.


def define_flags(flag_values=flags.FLAGS):
  """Defines one absl flag per knob on `flag_values`, with the defaults of `RunSpec()`."""
  for cls in SECTIONS.values():
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
      name, default = cls.PREFIX + field.name, field.default
      help_text = docs[field.name]
      choices = field.metadata.get("choices")
      kw = dict(flag_values=flag_values)
      if field.type is bool:
        flags.DEFINE_boolean(name, default, help_text, **kw)
      elif field.type is str and choices:
        flags.DEFINE_enum(name, default, list(choices), help_text, **kw)
      elif field.type is str:
        flags.DEFINE_string(name, default, help_text, **kw)
      elif field.type is int:
        flags.DEFINE_integer(name, default, help_text, **kw)
      elif field.type is float:
        flags.DEFINE_float(name, default, help_text, **kw)
      else:  # tuple
        flags.DEFINE_list(name, [f"{v:g}" for v in default], help_text + " (min,max)", **kw)


def from_flags(flag_values=flags.FLAGS):
  """The `RunSpec` of parsed flags (those `define_flags` defined)."""
  return from_flat({flag: flag_values[flag].value for flag in _flag_table()})


def from_flat(values):
  """A `RunSpec` from {flag name: value}; knobs not given are at their defaults."""
  return RunSpec().replace(**values)


# ------------------------------------------------------------------------------------------------
# config.json.


def to_json(spec):
  """The config.json dict of a spec: `{"format": 2, "<section>": {field: value}}`."""
  out = {"format": FORMAT}
  for section in SECTIONS:
    out[section] = json.loads(json.dumps(dataclasses.asdict(getattr(spec, section))))
  return out


def _from_format1(config):
  """A config.json written before the run spec: every training flag in `flags`, augmentation
  knobs in `flags.augment_config`."""
  flat = dict(config["flags"])
  flat.update({f"aug_{k}": v for k, v in (flat.pop("augment_config", None) or {}).items()})
  return flat


def from_json(config, where="config.json"):
  """The `RunSpec` of a config.json dict (this format, or the one before the run spec).

  A knob the file lacks (its run predates the knob) is at its default, the behaviour of the code
  before the knob existed. Unknown sections or knobs, and values of the wrong type, are refused
  with a ConfigError naming `where` and the field.
  """
  if not isinstance(config, dict):
    raise ConfigError(f"{where}: expected a JSON object, got a {type(config).__name__}; restore "
                      "the file or retrain.")
  if "format" in config:
    if config["format"] != FORMAT:
      raise ConfigError(f"{where}: format {config['format']!r} is not {FORMAT}; written by "
                        "another version of aop_tf?")
    flat = {}
    for section, values in config.items():
      if section == "format":
        continue
      if section not in SECTIONS or not isinstance(values, dict):
        raise ConfigError(f"{where}: unexpected entry {section!r}; expected the sections "
                          f"{sorted(SECTIONS)}, each a JSON object.")
      known = {f.name for f in dataclasses.fields(SECTIONS[section])}
      for name, value in values.items():
        if name not in known:
          raise ConfigError(f"{where}: unknown field {section}.{name}; written by a newer "
                            "aop_tf?")
        flat[SECTIONS[section].PREFIX + name] = value
  elif isinstance(config.get("flags"), dict):
    flat = _from_format1(config)
  else:
    raise ConfigError(f"{where} has neither 'format' nor 'flags': not a config.json written by "
                      "`python -m aop_tf.train`.")
  try:
    return from_flat(flat)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None


def check_resumable(old, new, where):
  """Raises ConfigError when `new` differs from `old` in a knob that is not `resumable`."""
  resumable = {SECTIONS[s].PREFIX + f.name for s in SECTIONS
               for f in dataclasses.fields(SECTIONS[s]) if f.metadata.get("resumable")}
  old_flags, new_flags = old.flags(), new.flags()
  changed = [k for k in new_flags if k not in resumable and old_flags[k] != new_flags[k]]
  if changed:
    details = ", ".join(f"--{k}: {old_flags[k]!r} -> {new_flags[k]!r}" for k in changed[:4])
    raise ConfigError(f"{where} was trained with other settings ({details}); resuming would mix "
                      "two runs. Use a new --model_dir, or the original flags.")
