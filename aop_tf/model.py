"""The landmark U-Net: one builder for the paper's model and the CPU-sized ones.

Input: float32 [B, S, S, C] raw pixel values in [0, 255] (the model rescales), S = `input_size`.
Outputs: a dict with `heatmaps`, float32 [B, R, R, 3] (PS1, PS2, FH1; linear, trained with MSE
against unit-peak Gaussians), and, when `seg_classes > 0`, `segmentation`, float32 [B, R, R,
seg_classes] softmax probabilities (0 background, 1 pubic symphysis, 2 fetal head).
"""

import keras
from keras import layers

from aop_tf import NUM_LANDMARKS
from aop_tf import config

# The paper's Table 1: input 512x512x3, 64..1024 channels, decoder back to 512, resize to 64.
PAPER = dict(input_size=512, input_channels=3, base_filters=64, depth=4, heatmap_size=64,
             decode_to_full=True)


def _conv_block(x, filters, norm, name, dtype=None, sync=False):
  for i in (1, 2):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=norm == "none",
                      kernel_initializer="he_normal", name=f"{name}_conv{i}", dtype=dtype)(x)
    if norm == "batch":
      x = layers.BatchNormalization(synchronized=sync, name=f"{name}_bn{i}", dtype=dtype)(x)
    elif norm == "group":
      x = layers.GroupNormalization(groups=min(8, filters), name=f"{name}_gn{i}", dtype=dtype)(x)
    x = layers.ReLU(name=f"{name}_relu{i}", dtype=dtype)(x)
  return x


HEATMAP_ACTIVATIONS = ("linear", "spatial_softmax")


def build_unet(input_size=256, input_channels=1, base_filters=16, depth=4, heatmap_size=64,
               decode_to_full=False, norm="batch", seg_classes=0, heatmap_activation="linear",
               softmax_peak_scale=1.0, mixed_precision=False, sync_batch_norm=False,
               dropout=0.0, name="aop_unet"):
  """Builds the U-Net.

  Args:
    input_size: side S of the square input, pixels; a multiple of 2**depth.
    input_channels: 1 (gray) or 3.
    base_filters: channels of the first encoder block; block i has base * 2**i, the bottleneck
      base * 2**depth (the paper: 64, depth 4 -> 64..1024).
    depth: number of encoder (pooling) blocks.
    heatmap_size: side R of the output heatmaps, cells.
    decode_to_full: True decodes back to S and resizes to R (the paper); False stops the decoder at
      R, which needs S / R to be a power of two no larger than 2**depth (much cheaper on CPU).
    norm: "batch" (the paper), "group" or "none".
    seg_classes: if > 0, adds a segmentation head with that many classes at the heatmap resolution.
    heatmap_activation: "linear" (the paper; regressed against unit-peak Gaussians) or
      "spatial_softmax": a softmax over the R*R cells of each landmark, times `softmax_peak_scale`,
      trained as a distribution (cross-entropy against the normalised target).
    softmax_peak_scale: for "spatial_softmax": 2*pi*sigma**2 makes a target-shaped output peak at
      about 1, so confidences read like those of the linear head.
    mixed_precision: True computes the encoder and decoder in bfloat16 (variables stay float32;
      cpu.cfg epochs 1.34x faster on this AVX512-BF16 CPU); the heads always compute in float32.
      `float32_copy` turns such a model into a float32 one for evaluation and export.
    sync_batch_norm: batch norm computes its training statistics over all replicas of a
      `tf.distribute` strategy (the global batch), as one device would; no effect outside one.
    dropout: spatial dropout rate after the bottleneck and each decoder block (active in training
      only; no weights, so checkpoints load either way); 0 adds no layer.
    name: model name.

  Returns:
    A functional `keras.Model`.
  """
  if input_size % (2 ** depth):
    raise ValueError(f"input_size {input_size} must be a multiple of 2**depth = {2 ** depth}.")
  if heatmap_activation not in HEATMAP_ACTIVATIONS:
    raise ValueError(f"Unknown heatmap_activation {heatmap_activation!r}; expected one of "
                     f"{HEATMAP_ACTIVATIONS}.")
  if norm not in config.NORMS:
    raise ValueError(f"Unknown norm {norm!r}; expected one of {config.NORMS}.")
  n_up = config.decoder_blocks(input_size, heatmap_size, depth, decode_to_full)
  # None: the global policy (float32 unless a caller changed it).
  body = "mixed_bfloat16" if mixed_precision else None
  out = "float32" if mixed_precision else None

  inputs = keras.Input((input_size, input_size, input_channels), name="image")
  x = layers.Rescaling(1.0 / 255.0, name="rescale", dtype=body)(inputs)
  skips = []
  for i in range(depth):
    x = _conv_block(x, base_filters * 2 ** i, norm, f"enc{i + 1}", body, sync_batch_norm)
    skips.append(x)
    x = layers.MaxPooling2D(2, name=f"pool{i + 1}", dtype=body)(x)
  x = _conv_block(x, base_filters * 2 ** depth, norm, "bottleneck", body, sync_batch_norm)

  def noise(features, block):
    if not dropout:
      return features
    return layers.SpatialDropout2D(dropout, name=f"{block}_dropout", dtype=body)(features)

  x = noise(x, "bottleneck")
  for j in range(n_up):
    level = depth - 1 - j
    filters = base_filters * 2 ** level
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{j + 1}", dtype=body)(x)
    x = layers.Concatenate(name=f"skip{j + 1}", dtype=body)([x, skips[level]])
    x = noise(_conv_block(x, filters, norm, f"dec{j + 1}", body, sync_batch_norm), f"dec{j + 1}")

  def head(features, channels, head_name):
    y = layers.Conv2D(channels, 1, name=f"{head_name}_logits", dtype=out)(features)
    if y.shape[1] != heatmap_size:
      y = layers.Resizing(heatmap_size, heatmap_size, interpolation="bilinear",
                          name=f"{head_name}_resize", dtype=out)(y)
    return y

  maps = head(x, NUM_LANDMARKS, "heatmap")
  if heatmap_activation == "spatial_softmax":
    # Built-in layers only, so checkpoints load in safe mode without custom objects.
    cells = heatmap_size * heatmap_size
    maps = layers.Reshape((cells, NUM_LANDMARKS), name="heatmap_flatten", dtype=out)(maps)
    maps = layers.Softmax(axis=1, name="heatmap_softmax", dtype=out)(maps)
    maps = layers.Reshape((heatmap_size, heatmap_size, NUM_LANDMARKS), name="heatmap_unflatten",
                          dtype=out)(maps)
    maps = layers.Rescaling(float(softmax_peak_scale), name="heatmap_peak_scale", dtype=out)(maps)
  outputs = {"heatmaps": layers.Identity(name="heatmaps", dtype=out)(maps)}
  if seg_classes:
    seg = head(x, seg_classes, "seg")
    outputs["segmentation"] = layers.Softmax(name="segmentation", dtype=out)(seg)
  return keras.Model(inputs, outputs, name=name)


def float32_copy(model, model_kwargs):
  """The same network computing in float32 throughout, with `model`'s weights.

  Args:
    model: a `build_unet` model, typically trained with `mixed_precision=True`.
    model_kwargs: the `build_unet` keyword arguments it was built with (config.json["model"]).

  Returns:
    `model` itself when it was built without mixed precision, else a new float32 model.
  """
  if not model_kwargs.get("mixed_precision"):
    return model
  copy = build_unet(**{**model_kwargs, "mixed_precision": False}, name=model.name)
  copy.set_weights(model.get_weights())
  return copy


def build_paper_unet():
  """The paper's Table 1 model (about 31.0 M parameters)."""
  return build_unet(**PAPER, name="paper_unet")
