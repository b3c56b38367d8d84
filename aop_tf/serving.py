"""Serving signatures: thin input adapters around the landmark model and the shared decoder.

The model does not know how it is served. Each adapter turns one kind of raw input into the
model's input (`data.preprocess_image`, the one resize), runs the model, and decodes with the run's
`codec.HeatmapCodec` (the one decoder), so every export returns, per image:

  landmarks   float32 [B, 3, 2]  `(x, y)` in pixels of that input image, order PS1, PS2, FH1
  aop_deg     float32 [B]        Angle of Progression, degrees (NaN where degenerate)
  confidence  float32 [B, 3]     heatmap peaks / heatmap_scale (1 for a target-shaped peak)
  heatmaps    float32 [B, R, R, 3]
and an ensemble (`aop_tf.ensemble`) also

  aop_spread_deg float32 [B]     standard deviation of its members' AoPs, degrees

Signatures (`SIGNATURES`): `serving_default` takes `images`, tf.string [B] encoded PNG/JPEG/BMP/GIF
bytes of any size, gray or colour (what TF Serving's REST `{"b64": ...}` delivers); `serve_images`
takes `images`, uint8 [B, H, W, C] (C = 1..4) of one size.

Bad input raises, it never returns numbers: another dtype is refused by the signature itself
("expected to be a uint8 tensor"); an image with no pixels or with C outside 1..4 fails an
assertion that says so; one undecodable element fails a `serving_default` call with the decoder's
message ("Unknown image file format", "Invalid PNG"), so a client resends the images one by one to
find it (`aop_tf.predict` does). An empty batch (B = 0) answers with empty outputs. The TFLite
graph (`tflite_fn`) takes
`images`, uint8 [1, H, W, C] of any size; it resizes with `preprocess_image_tflite`, the same
antialiased bilinear resize written as matrix products, because TF's `ScaleAndTranslate` kernel
(behind `tf.image.resize(antialias=True)`) has no TFLite builtin.
"""

import keras
import numpy as np
import tensorflow as tf

from aop_tf import NUM_LANDMARKS
from aop_tf import codec as codec_lib
from aop_tf import data

SERVING_DEFAULT = "serving_default"
SERVE_IMAGES = "serve_images"
SIGNATURES = (SERVING_DEFAULT, SERVE_IMAGES)
# The outputs: `codec.OUTPUT_KEYS`, and `codec.ENSEMBLE_KEYS` for ensembles only (so that JSON
# responses stay finite).


def run_and_decode(model, images, size_px, codec):
  """Model + the codec's decoder on preprocessed images.

  Args:
    model: the Keras landmark model.
    images: float32 [B, S, S, C] 0..255 (`data.preprocess_image` output).
    size_px: float32 [B, 2] `(width, height)` of each original image, pixels.
    codec: the run's `codec.HeatmapCodec`.

  Returns:
    dict of `codec.OUTPUT_KEYS` (and `codec.ENSEMBLE_KEYS` for an ensemble; see the module
    docstring).
  """
  decoded = codec.decode(model(images, training=False), size_px)
  return {key: decoded[key] for key in codec_lib.OUTPUT_KEYS + codec_lib.ENSEMBLE_KEYS
          if key in decoded}


def _input_of(model, codec):
  """`(S, C)`: the model input side (the codec's) and channels (the model's)."""
  return codec.input_size, int(model.input_shape[-1])


def _at_least_one(model, images, size_px, codec):
  """`run_and_decode` that also answers an empty batch: the model (whose batch norm kernels refuse
  B = 0) runs on one padded dummy image and the outputs are cut back to B = 0."""
  n = tf.shape(images)[0]
  pad = tf.maximum(1 - n, 0)
  images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
  size_px = tf.pad(size_px, [[0, pad], [0, 0]], constant_values=1.0)
  outputs = run_and_decode(model, images, size_px, codec)
  return {key: value[:n] for key, value in outputs.items()}


def _checked(images):
  """uint8 [B, H, W, C] after an assertion that H, W >= 1 and C in 1..4."""
  shape = tf.shape(images)
  ok = tf.logical_and(tf.reduce_all(shape[1:3] >= 1),
                      tf.logical_and(shape[3] >= 1, shape[3] <= 4))
  check = tf.debugging.Assert(ok, [
      "serve_images: images must be uint8 [B, H, W, C] with H, W >= 1 and C = 1 (gray), "
      "2 (gray + alpha), 3 (RGB) or 4 (RGBA); got shape", shape], summarize=4)
  with tf.control_dependencies([check]):
    return tf.identity(images)


def _size_px(image):
  """`(width, height)` float32 [2] of an [H, W, C] image."""
  shape = tf.shape(image)
  return tf.cast(tf.stack([shape[1], shape[0]]), tf.float32)


def images_fn(model, codec):
  """`serve_images` adapter: uint8 [B, H, W, C] (one size, C = 1..4) -> outputs dict."""
  size, channels = _input_of(model, codec)

  def serve_images(images):
    images = _checked(images)
    prepared = data.preprocess_image(images, size, channels)
    shape = tf.shape(images)
    size_px = tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)
    size_px = tf.tile(size_px[None], [shape[0], 1])
    return _at_least_one(model, prepared, size_px, codec)

  return serve_images


def encoded_fn(model, codec):
  """`serving_default` adapter: tf.string [B] encoded images (any sizes, C = 1..4) -> outputs."""
  size, channels = _input_of(model, codec)

  def decode_one(encoded):
    # Sizes differ from image to image, so decode and resize one at a time.
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
    return data.preprocess_image(image, size, channels), _size_px(image)

  def serving_default(images):
    prepared, size_px = tf.map_fn(
        decode_one, images,
        fn_output_signature=(tf.TensorSpec([size, size, channels], tf.float32),
                             tf.TensorSpec([2], tf.float32)))
    return _at_least_one(model, prepared, size_px, codec)

  return serving_default


def resize_matrix(in_size, out_size):
  """Weights [out_size, in_size] of the antialiased bilinear (triangle) resize along one axis.

  The same weights as `tf.image.resize(..., antialias=True)` (TF's ScaleAndTranslate, half-pixel
  centres): output cell `j` samples `(j + 0.5) * in / out` with a triangle kernel widened by the
  downscale factor, normalised over the taps inside the image.

  Args:
    in_size: int32 scalar tensor, input length, pixels.
    out_size: python int, output length.
  """
  in_f = tf.cast(in_size, tf.float32)
  inv_scale = in_f / float(out_size)
  kernel_scale = tf.maximum(inv_scale, 1.0)
  sample = (tf.range(out_size, dtype=tf.float32) + 0.5) * inv_scale
  centres = tf.range(in_f, dtype=tf.float32) + 0.5
  weights = tf.nn.relu(1.0 - tf.abs(centres[None, :] - sample[:, None]) / kernel_scale)
  return weights / tf.reduce_sum(weights, axis=1, keepdims=True)


def preprocess_image_tflite(image, input_size, input_channels):
  """`data.preprocess_image` of one image [1, H, W, C] (C = 1..4) in TFLite builtin ops only.

  The same steps in the same order: the antialiased bilinear resize (here as two matrix products
  with `resize_matrix`), then `data.convert_channels` (its run-time-channels branch).

  Args:
    image: uint8 [1, H, W, C], any H, W.
    input_size, input_channels: the model's S and C.

  Returns:
    float32 [1, S, S, input_channels] in 0..255.
  """
  shape = tf.shape(image)
  x = tf.transpose(tf.cast(image[0], tf.float32), [2, 0, 1])  # [C, H, W]
  rows = resize_matrix(shape[1], input_size)
  cols = resize_matrix(shape[2], input_size)
  x = tf.matmul(tf.matmul(rows[None], x), cols[None], transpose_b=True)  # [C, S, S]
  x = tf.transpose(x, [1, 2, 0])
  return data.convert_channels(x, input_channels)[None]


def tflite_fn(model, codec):
  """TFLite adapter: uint8 [1, H, W, C] (any size, C = 1..4) -> outputs dict (batch 1)."""
  size, channels = _input_of(model, codec)

  def serve_tflite(images):
    prepared = preprocess_image_tflite(images, size, channels)
    shape = tf.shape(images)
    size_px = tf.cast(tf.stack([shape[2], shape[1]]), tf.float32)[None]
    return run_and_decode(model, prepared, size_px, codec)

  return serve_tflite


# Input signatures (the `images` input): any batch, size and channel count; the adapters convert.
INPUT_SPECS = {
    SERVING_DEFAULT: [tf.TensorSpec([None], tf.string, name="images")],
    SERVE_IMAGES: [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")],
}
TFLITE_SPEC = [tf.TensorSpec([1, None, None, None], tf.uint8, name="images")]


def serving_archive(model, codec):
  """A `keras.export.ExportArchive` with the `serving_default` and `serve_images` endpoints.

  Args:
    model: the Keras landmark model (input float32 [B, S, S, C] 0..255, output `heatmaps`).
    codec: its `codec.HeatmapCodec` (`config.RunSpec.heatmap_codec()`).

  Returns:
    The archive; `archive.write_out(path)` writes the SavedModel.
  """
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SERVING_DEFAULT, encoded_fn(model, codec), INPUT_SPECS[SERVING_DEFAULT])
  archive.add_endpoint(SERVE_IMAGES, images_fn(model, codec), INPUT_SPECS[SERVE_IMAGES])
  return archive


def tflite_archive(model, codec):
  """An archive whose only (`serving_default`) endpoint is the TFLite graph, for the converter."""
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SERVING_DEFAULT, tflite_fn(model, codec), TFLITE_SPEC)
  return archive


def check_outputs(outputs, batch):
  """Raises ValueError unless `outputs` has every key with the documented batch shapes."""
  for key in codec_lib.OUTPUT_KEYS:
    if key not in outputs:
      raise ValueError(f"Serving output lacks {key!r}; has {sorted(outputs)}.")
  expected = {"landmarks": (batch, NUM_LANDMARKS, 2), "aop_deg": (batch,),
              "confidence": (batch, NUM_LANDMARKS)}
  for key, shape in expected.items():
    got = tuple(np.shape(outputs[key]))
    if got != shape:
      raise ValueError(f"Serving output {key!r} has shape {got}; expected {shape}.")
