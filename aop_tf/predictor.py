"""One predictor interface over Keras checkpoints, SavedModels and TFLite files.

  model = predictor.load("runs/cpu")                        # training directory (best checkpoint)
  model = predictor.load("saved_models/cpu")                # SavedModel: its serve_images signature
  model = predictor.load("saved_models/cpu/model.tflite")   # TFLite, with LiteRT
  out = model.predict([image, ...])                         # uint8 [H, W, C] of any sizes

Every predictor takes original images, uint8 [H, W, C] (or [H, W]; C = 1 gray, 2 gray + alpha,
3 RGB, 4 RGBA) of any size, and returns numpy arrays stacked over the list, in pixels of each image:

  landmarks   float32 [N, 3, 2]  `(x, y)`, order PS1, PS2, FH1
  aop_deg     float32 [N]        Angle of Progression, degrees (NaN where degenerate)
  confidence  float32 [N, 3]     heatmap peaks / heatmap_scale (1 for a target-shaped peak)
  heatmaps    float32 [N, R, R, 3]
  aop_spread_deg float32 [N]     an ensemble's spread of member AoPs, degrees; NaN for one model

Batching is done once, here: `chunks` cuts a stream into lists of at most `batch_size` items, and
`Predictor.predict` runs each stretch of equal-size images of a list in one model call, of at most
`MAX_BATCH_VALUES` pixel values. Evaluation
(`aop_tf.evaluate`) is a predictor + a data source + metrics; `aop_tf.predict` is a predictor +
image files + writers; `aop_tf.export` checks its exports against the Keras predictor.

This module and the TFLite predictor run without TensorFlow (LiteRT, numpy); the Keras,
SavedModel and re-decoding predictors are in `aop_tf.predictor_tf`, which `load` imports only
for them (a one-line error says what to install where TensorFlow is missing).
"""

import dataclasses
import os
from concurrent import futures

import numpy as np

from aop_tf import codec as codec_lib
from aop_tf import config as config_lib
from aop_tf import zoo
from aop_tf.io import files

OUTPUT_KEYS = codec_lib.OUTPUT_KEYS + codec_lib.ENSEMBLE_KEYS  # every predictor returns all
# The modules a missing TensorFlow install lacks (`predictor_tf` imports them).
TENSORFLOW_MODULES = ("tensorflow", "keras", "tensorflow_datasets")
# At most this many pixel values (H * W * C) go to the model in one call (a float32 copy of them is
# 64 MiB): a batch is bounded by its pixels, not by its count.
MAX_BATCH_VALUES = 1 << 24
SAVED_MODEL_FILE = "saved_model.pb"
TFLITE_FILE = "model.tflite"
EXPORT_INFO_FILE = "export_info.json"


def as_model_input(image, where="image"):
  """Checks one image: uint8 [H, W, C] (C = 1..4, H, W >= 1); a 2-D array gains a channel axis.

  Any other pixel type is refused rather than cast (a uint16 or float array cast to uint8 would
  silently become garbage).

  Raises:
    ValueError naming `where` and what to do.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{where}: pixel type {image.dtype}; the model takes uint8 images (scale "
                     "16-bit by 255/65535 and float 0..1 by 255, then round)")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or min(image.shape[:2]) < 1:
    raise ValueError(f"{where}: image shape {image.shape}; expected [H, W, C] with H, W >= 1 "
                     "and C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA)")
  return image


def chunks(items, batch_size):
  """Lists of at most `batch_size` consecutive items of an iterable (the last may be shorter)."""
  batch_size = max(1, int(batch_size))
  pending = []
  for item in items:
    pending.append(item)
    if len(pending) == batch_size:
      yield pending
      pending = []
  if pending:
    yield pending


def _same_size_runs(images, max_values=MAX_BATCH_VALUES):
  """`(start, end)` of each stretch of consecutive equal-shape images, cut so that a stretch holds
  at most `max_values` pixel values (one image at least)."""
  start = 0
  while start < len(images):
    limit = start + max(1, max_values // max(1, images[start].size))
    end = start + 1
    while end < min(len(images), limit) and images[end].shape == images[start].shape:
      end += 1
    yield start, end
    start = end


def first_line(error):
  """The first non-empty line of an exception's message (TF errors run to many lines)."""
  text = getattr(error, "message", None) or str(error)
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _with_ensemble_keys(outputs):
  """`outputs` with the `codec.ENSEMBLE_KEYS` of a single model's outputs, NaN per image."""
  batch = len(outputs["aop_deg"])
  for key in codec_lib.ENSEMBLE_KEYS:
    if key not in outputs:
      outputs[key] = np.full((batch,), np.nan, np.float32)
  return outputs


class Predictor:
  """Base of the predictors: checks images, runs equal-size stretches, stacks the outputs.

  Subclasses set `kind`, `path`, `codec` (the `codec.HeatmapCodec` that decodes, None if the model
  does not say), `spec` (the run spec it was trained with, or None) and `heatmap_cells` (R, 0 if
  unknown), and implement `_run(images)`: uint8 [B, H, W, C] of one size -> dict of numpy
  `OUTPUT_KEYS`.
  """
  kind = None
  spec = None

  def __init__(self, path, codec=None, heatmap_cells=0):
    self.path = path
    self.codec = codec
    self.heatmap_cells = int(heatmap_cells or 0)

  def predict(self, images):
    """list of uint8 [H, W, C] (any sizes) -> dict of numpy arrays stacked over the list."""
    images = [as_model_input(image, f"image {i}") for i, image in enumerate(images)]
    if not images:
      r = self.heatmap_cells
      return {"landmarks": np.zeros((0, 3, 2), np.float32), "aop_deg": np.zeros((0,), np.float32),
              "confidence": np.zeros((0, 3), np.float32),
              "heatmaps": np.zeros((0, r, r, 3), np.float32),
              "aop_spread_deg": np.zeros((0,), np.float32)}
    parts = [_with_ensemble_keys(self._run(np.stack(images[start:end])))
             for start, end in _same_size_runs(images)]
    return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_KEYS}

  def _run(self, images):
    raise NotImplementedError

  def describe(self):
    """What a report should say about the model: path, kind, decoding."""
    return {"path": os.path.abspath(self.path), "kind": self.kind,
            "decode": None if self.codec is None else {
                "method": self.codec.decode_method, "blur_sigma_cells": self.codec.blur_sigma_cells,
                "fh1_method": self.codec.fh1_method, "heatmap_scale": self.codec.heatmap_scale}}


def native_bfloat16(cpuinfo="/proc/cpuinfo"):
  """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in its flags; Linux).

  Elsewhere oneDNN would emulate bfloat16, slower than float32, so `--bfloat16` defaults to this.
  """
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("flags"):
          return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[-1].split()))
  except OSError:
    pass
  return False


def export_spec(folder):
  """The run spec recorded in an export's `export_info.json`, or None."""
  path = os.path.join(folder, EXPORT_INFO_FILE)
  if not os.path.isfile(path):
    return None
  info = files.read_json(path)
  return config_lib.from_json(info.get("config"), f"{path} (config)")


class _LiteRunner:
  """One LiteRT interpreter of a `model.tflite`; used by one thread at a time."""

  def __init__(self, path, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
    runner = self._interpreter.get_signature_runner()  # an export's only one, serving_default
    self._input = runner.get_input_details()["images"]["index"]
    outputs = runner.get_output_details()
    self._outputs = {k: v["index"] for k, v in outputs.items()}
    self.heatmap_shape = outputs.get("heatmaps", {}).get("shape", [1, 0, 0, 3])
    missing = set(codec_lib.OUTPUT_KEYS) - set(self._outputs)
    if missing:
      raise ValueError(f"{path} lacks outputs {sorted(missing)}; re-export it with "
                       "`python -m aop_tf.export`.")
    self._shape = None

  def run(self, image):
    image = np.ascontiguousarray(image)[None]
    if image.shape != self._shape:  # Re-plan only when the image size changes.
      self._interpreter.resize_tensor_input(self._input, image.shape, strict=True)
      self._interpreter.allocate_tensors()
      self._shape = image.shape
    self._interpreter.set_tensor(self._input, image)
    self._interpreter.invoke()
    return {k: self._interpreter.get_tensor(i).copy() for k, i in self._outputs.items()}


class TFLitePredictor(Predictor):
  """Runs `model.tflite` (uint8 [1, H, W, C] in) with LiteRT, one image per interpreter call.

  Args:
    path: the `.tflite` file.
    num_threads: threads of each interpreter (None: LiteRT's default, one).
    num_interpreters: interpreters that run different images of one call side by side (a thread
      each; LiteRT releases the GIL while it runs). On a multi-core CPU, k interpreters of one
      thread give more images/s than one interpreter of k threads (benchmarks/speed.py).
  """
  kind = "tflite"

  def __init__(self, path, num_threads=None, num_interpreters=1):
    count = max(1, int(num_interpreters))
    try:
      self._runners = [_LiteRunner(path, num_threads) for _ in range(count)]
    except (ValueError, RuntimeError) as e:
      raise ValueError(f"{path}: cannot load the TFLite model ({first_line(e)}); re-export it "
                       "with `python -m aop_tf.export`.") from None
    self.spec = export_spec(os.path.dirname(os.path.abspath(path)))
    super().__init__(path, None if self.spec is None else self.spec.heatmap_codec(),
                     self._runners[0].heatmap_shape[1])
    self._pool = futures.ThreadPoolExecutor(count, "tflite") if count > 1 else None

  def _run(self, images):
    if self._pool is None or len(images) == 1:
      parts = [self._runners[0].run(image) for image in images]
    else:
      # Contiguous shares, so that each interpreter keeps its planned size on same-size runs.
      shares = np.array_split(np.arange(len(images)), min(len(self._runners), len(images)))
      jobs = [self._pool.submit(lambda r, idx: [r.run(images[i]) for i in idx], runner, share)
              for runner, share in zip(self._runners, shares)]
      parts = [part for job in jobs for part in job.result()]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load(path, checkpoint=None, decode=None, bfloat16=False, num_threads=None,
         num_interpreters=1, trust_model=False):
  """The predictor of a training directory, a SavedModel folder or a `.tflite` file.

  Args:
    path: a training directory (config.json + *.keras), an export folder (SavedModel preferred,
      else its model.tflite), a `.tflite` file, or the name of a shipped model (`aop_tf.zoo`).
    checkpoint: training directory: which `<checkpoint>.keras` (default: the first of
      `model_dir.CHECKPOINTS`).
    decode: optional {`decode_method`, `blur_sigma_cells`, `fh1_method`} overriding the model's
      decoding (an export's heatmaps are then decoded again).
    bfloat16, trust_model: SavedModel only, see `predictor_tf.SavedModelPredictor`.
    num_threads, num_interpreters: TFLite only, see `TFLitePredictor`.

  Raises:
    ModuleNotFoundError: all but a TFLite model without `decode` need TensorFlow, not installed.
  """
  decode = {k: v for k, v in (decode or {}).items() if v is not None}
  path = zoo.resolve(path) or path  # a shipped model's name: its folder
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, config_lib.CONFIG_FILE)):
    return _tensorflow(f"--model={path}: a training directory").load_training_dir(
        path, checkpoint, decode)
  if checkpoint:
    raise ValueError(f"--checkpoint={checkpoint} applies to training directories; {path} is "
                     "not one.")
  if os.path.isfile(path) and path.endswith(".tflite"):
    inner = TFLitePredictor(path, num_threads, num_interpreters)
  elif os.path.isdir(path) and os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
    inner = _tensorflow(f"--model={path}: a SavedModel").SavedModelPredictor(
        path, bfloat16, trust_model)
  elif os.path.isdir(path) and os.path.isfile(os.path.join(path, TFLITE_FILE)):
    inner = TFLitePredictor(os.path.join(path, TFLITE_FILE), num_threads, num_interpreters)
  else:
    shipped = ", ".join(zoo.names()) or "none installed"
    raise FileNotFoundError(f"--model={path} is neither a training directory (config.json), a "
                            f"SavedModel folder ({SAVED_MODEL_FILE}), a .tflite file nor a shipped "
                            f"model ({shipped}); train one with `python -m aop_tf.train` or export "
                            "one with `python -m aop_tf.export`.")
  if not decode:
    return inner
  # An export that does not record its codec is re-decoded from the defaults.
  codec = override(inner.codec or codec_lib.HeatmapCodec(heatmap_size=inner.heatmap_cells or 64),
                   decode)
  if codec == inner.codec:
    return inner
  return _tensorflow("decoding an export's heatmaps again").RedecodingPredictor(inner, codec)


def override(codec, decode):
  """`codec` with the decode settings in `decode` (`HeatmapCodec` field names) changed."""
  try:
    return dataclasses.replace(codec, **decode)
  except TypeError as e:
    raise ValueError(f"Unknown decode settings {sorted(decode)}: {e}") from None


def missing_tensorflow(error, what):
  """The exception to raise for `error`, an ImportError met while importing a module that needs
  TensorFlow for `what`: a one-line ModuleNotFoundError saying what to install where TensorFlow
  (or Keras, TFDS) is missing, else `error` itself."""
  if (error.name or "").split(".")[0] not in TENSORFLOW_MODULES:
    return error
  return ModuleNotFoundError(f"{what} needs TensorFlow: pip install 'aop_tf[train]'",
                             name=error.name)


def _tensorflow(what):
  """`aop_tf.predictor_tf`, or `missing_tensorflow`'s error for `what`."""
  try:
    from aop_tf import predictor_tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise missing_tensorflow(e, what) from None
  return predictor_tf
