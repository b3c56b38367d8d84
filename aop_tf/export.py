"""Exports a trained model as a SavedModel (TF Serving) and a TFLite file, verified, atomically.

  python -m aop_tf.export --model_dir=runs/smoke --name=smoke [--checkpoint=best_val_mre] \
      [--quantize=none|float16|dynamic|int8] [--calibration_data=data/phantom]

writes `saved_models/<name>/`:
  saved_model.pb, variables/, fingerprint.pb   the SavedModel, signatures `serving_default`
                                               (encoded image bytes) and `serve_images` (uint8)
  model.tflite                                 uint8 [1, H, W, C] image of any size in, same outputs
  export_info.json                             source, checkpoint, config, quantization,
                                               verification drifts, versions
Everything is built in a temporary folder beside the target, then loaded back and run on test
images (SavedModel signatures and TFLite against the Keras model and the shared decoder); only a
verified export replaces the previous one, by rename, so a failure never leaves a half-written
model nor removes a good one.
"""

import dataclasses
import datetime
import glob
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import aop_tf
from aop_tf import cli
from aop_tf import codec as codec_lib
from aop_tf import config as config_lib
from aop_tf import data
from aop_tf import model_dir as model_dir_lib
from aop_tf import predictor as predictor_lib
from aop_tf import predictor_tf
from aop_tf import serving

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_FILE = predictor_lib.TFLITE_FILE
INFO_FILE = predictor_lib.EXPORT_INFO_FILE

# Float exports must reproduce the Keras model + shared decoder this closely (the test tolerances).
LANDMARK_TOL_PX = 0.5
AOP_TOL_DEG = 0.1


class ExportError(RuntimeError):
  """An export failed verification; the previous export (if any) was left in place."""


def calibration_images(data_dir, split="train", max_images=100):
  """Up to `max_images` uint8 [H, W, C] images of a dataset split, for int8 calibration."""
  data_dir = data.find_dataset_dir(data_dir)
  images = []
  for example in data.load_split(data_dir, split).take(max_images):
    images.append(example["image"].numpy())
  if not images:
    raise ValueError(f"Split {split!r} of {data_dir} has no images to calibrate with.")
  return images


# Op types of the U-Net body that int8 quantizes; everything else (the in-graph resize, the decoder,
# the AoP) stays float: quantized, the decoder's divisions and sub-cell offsets break down.
INT8_OPS = ("CONV_2D", "TRANSPOSE_CONV", "MAX_POOL_2D", "CONCATENATION", "RESIZE_BILINEAR")


def op_types(tflite_bytes):
  """The set of op type names (e.g. "CONV_2D") in a `.tflite` flatbuffer."""
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_content=tflite_bytes)
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  return {op["op_name"] for op in ops}


def convert_tflite(saved_model_dir, quantize="none", representative_images=None):
  """Converts the (single-signature) TFLite SavedModel to a flatbuffer with builtin ops only.

  Args:
    saved_model_dir: written from `serving.tflite_archive`.
    quantize: "none" (float32), "float16" (float16 weights), "dynamic" (int8 weights, float
      activations) or "int8" (the U-Net body, `INT8_OPS`, in int8 weights and activations
      calibrated on `representative_images`; input resize and decoder stay float32).
    representative_images: list of uint8 [H, W, C] images, needed for "int8".

  Returns:
    The `.tflite` bytes.
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"Unknown quantization {quantize!r}; expected one of {QUANTIZATIONS}.")

  def converter():
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
      conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
      conv.target_spec.supported_types = [tf.float16]
    return conv

  if quantize != "int8":
    return converter().convert()
  if not representative_images:
    raise ValueError("--quantize=int8 needs calibration images: pass "
                     "--calibration_data=<dataset dir> (e.g. data/phantom).")

  def representative_dataset():
    for image in representative_images:
      yield {"images": np.asarray(image, np.uint8)[None]}

  float_ops = op_types(tf.lite.TFLiteConverter.from_saved_model(saved_model_dir).convert())
  conv = converter()
  conv.representative_dataset = representative_dataset
  options = tf.lite.experimental.QuantizationDebugOptions(
      denylisted_ops=sorted(float_ops - set(INT8_OPS)))
  with warnings.catch_warnings():
    # Calibration runs TF's own (deprecated) interpreter internally; nothing to act on.
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=representative_dataset, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def synthetic_test_images():
  """Two deterministic uint8 test images: gray 200x240 [H, W, 1] and RGB 96x80 [H, W, 3]."""
  rng = np.random.default_rng(0)
  images = []
  for height, width, channels in ((200, 240, 1), (96, 80, 3)):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 127 + 80 * np.sin(xx / width * 5.0) * np.cos(yy / height * 3.0)
    noise = rng.normal(0, 12, (height, width, channels))
    images.append(np.clip(base[..., None] + noise, 0, 255).astype(np.uint8))
  return images


def _encode_png(image):
  return tf.io.encode_png(tf.constant(image)).numpy()


def _drift(got, want):
  """Max absolute differences of landmarks (px), AoP (deg), confidence and heatmaps."""
  def maxabs(key):
    a, b = np.asarray(got[key], np.float64), np.asarray(want[key], np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if np.any(np.isfinite(a) != np.isfinite(b)):
      return float("inf")
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0
  return {"landmarks_px": maxabs("landmarks"), "aop_deg": maxabs("aop_deg"),
          "confidence": maxabs("confidence"), "heatmaps": maxabs("heatmaps")}


def _worst(drifts):
  worst = {}
  for drift in drifts:
    for key, value in drift.items():
      worst[key] = max(worst.get(key, 0.0), value)
  return worst


def verify_export(export_dir, reference, test_images, quantize="none", n_real=0):
  """Loads the export back and compares it with the Keras model on `test_images`.

  Runs `serving_default` (PNG bytes), `serve_images` (uint8) and `model.tflite` against
  `reference` (the Keras model + codec, a `predictor_tf.KerasPredictor`). The SavedModel must match
  within `LANDMARK_TOL_PX` / `AOP_TOL_DEG`, and so must a float TFLite model; a quantized TFLite
  model must give finite outputs of the right shapes, and its drift is recorded. The first
  `n_real` test images are real (the calibration data): the drift on them alone is recorded too,
  as synthetic images give flat heatmaps whose peaks jump under quantization.

  Returns:
    dict `{"savedmodel": worst drift, "tflite": worst drift, "tflite_real": worst drift on the
    real images (None without), "n_images": N, "n_real": n_real}`.

  Raises:
    ExportError: on a mismatch.
  """
  loaded = tf.saved_model.load(export_dir)
  for name in serving.SIGNATURES:
    if name not in loaded.signatures:
      raise ExportError(f"{export_dir} lacks the {name!r} signature.")
  lite = predictor_lib.TFLitePredictor(os.path.join(export_dir, TFLITE_FILE))
  sm_drifts, lite_drifts = [], []
  for image in test_images:
    want = reference.predict([image])
    by_bytes = loaded.signatures[serving.SERVING_DEFAULT](
        images=tf.constant([_encode_png(image)]))
    by_pixels = loaded.signatures[serving.SERVE_IMAGES](images=tf.constant(image[None]))
    for out in (by_bytes, by_pixels):
      out = {k: v.numpy() for k, v in out.items()}
      serving.check_outputs(out, 1)
      sm_drifts.append(_drift(out, want))
    got = lite.predict([image])
    serving.check_outputs(got, 1)
    if not np.all(np.isfinite(got["landmarks"])):
      raise ExportError(f"model.tflite ({quantize}) gives non-finite landmarks "
                        f"{got['landmarks'].tolist()} on a {image.shape} test image.")
    lite_drifts.append(_drift(got, want))
  result = {"savedmodel": _worst(sm_drifts), "tflite": _worst(lite_drifts),
            "tflite_real": _worst(lite_drifts[:n_real]) if n_real else None,
            "n_images": len(test_images), "n_real": n_real}
  checks = [("SavedModel", result["savedmodel"])]
  if quantize == "none":
    checks.append(("model.tflite", result["tflite"]))
  for what, drift in checks:
    if drift["landmarks_px"] > LANDMARK_TOL_PX or drift["aop_deg"] > AOP_TOL_DEG:
      raise ExportError(
          f"{what} disagrees with the Keras model: landmarks differ by up to "
          f"{drift['landmarks_px']:.3f} px (tolerance {LANDMARK_TOL_PX}), AoP by "
          f"{drift['aop_deg']:.3f} deg (tolerance {AOP_TOL_DEG}). The export was not installed.")
  return result


def versions():
  import keras
  out = {"aop_tf": aop_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
         "numpy": np.__version__, "python": platform.python_version()}
  try:
    from importlib import metadata
    out["ai_edge_litert"] = metadata.version("ai-edge-litert")
  except Exception:  # pylint: disable=broad-except
    out["ai_edge_litert"] = None
  return out


def _make_readable(folder):
  """mkdtemp/mkstemp create owner-only files; an export is read by servers running as others."""
  umask = os.umask(0)
  os.umask(umask)
  for root, dirs, files in os.walk(folder):
    os.chmod(root, 0o777 & ~umask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _fsync_tree(folder):
  """Flushes every file and folder under `folder` to disk (before it is renamed into place)."""
  for root, _, files in os.walk(folder):
    for path in [os.path.join(root, name) for name in files] + [root]:
      model_dir_lib.fsync_path(path)


SCRATCH_PREFIX = ".tmp-tflite-graph-"


def _owner_alive(path):
  """Whether the PID in a scratch folder's name (`.tmp-tflite-graph-<pid>-*`) is running."""
  pid = os.path.basename(path)[len(SCRATCH_PREFIX):].split("-", 1)[0]
  if not pid.isdigit():
    return False  # named before the PID was: nobody's any more
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def recover_interrupted(export_dir):
  """Undoes what a kill during an earlier export left next to `export_dir`.

  `_swap_in` renames the previous export to `.old-<name>-*` and the new one into place; a kill
  between the two renames leaves no `<name>`: the previous export is renamed back. Unfinished
  `.tmp-<name>-*` folders of killed exports are removed, and so are the TFLite conversion's
  scratch folders (`.tmp-tflite-graph-<pid>-*`) whose process is gone. Returns the paths acted on.
  """
  parent, name = os.path.dirname(export_dir), os.path.basename(export_dir)
  acted = []
  for path in glob.glob(os.path.join(glob.escape(parent), SCRATCH_PREFIX + "*")):
    if not _owner_alive(path):
      shutil.rmtree(path, ignore_errors=True)
      acted.append(path)
  olds = sorted(glob.glob(os.path.join(glob.escape(parent), f".old-{glob.escape(name)}-*")))
  if olds and not os.path.lexists(export_dir):
    os.rename(olds[-1], export_dir)
    acted.append(olds.pop())
  for path in olds + glob.glob(os.path.join(glob.escape(parent), f".tmp-{glob.escape(name)}-*")):
    shutil.rmtree(path, ignore_errors=True)
    acted.append(path)
  return acted


def _swap_in(tmp_dir, export_dir):
  """Renames `tmp_dir` to `export_dir`, replacing an existing export only once the new is in.

  The two renames are not one atomic step; `recover_interrupted` repairs a kill between them.
  """
  old = None
  if os.path.lexists(export_dir):
    old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(export_dir)}-",
                           dir=os.path.dirname(export_dir))
    os.rmdir(old)
    os.rename(export_dir, old)
  try:
    os.rename(tmp_dir, export_dir)
  except BaseException:
    if old is not None:
      os.rename(old, export_dir)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _step(message):
  print(f"[export] {message}", flush=True)


def _write(model, codec, tmp_dir, scratch, quantize, calibration):
  """Writes the SavedModel and `model.tflite` into `tmp_dir`; returns the TFLite size, bytes."""
  _step(f"1/4 writing the SavedModel ({', '.join(serving.SIGNATURES)})")
  serving.serving_archive(model, codec).write_out(tmp_dir, verbose=False)
  _step(f"2/4 converting to TFLite (quantize={quantize})")
  serving.tflite_archive(model, codec).write_out(scratch, verbose=False)
  tflite_bytes = convert_tflite(scratch, quantize, calibration)
  with open(os.path.join(tmp_dir, TFLITE_FILE), "wb") as f:
    f.write(tflite_bytes)
  return len(tflite_bytes)


def export(model, spec, export_dir, quantize="none", calibration=None, test_images=None,
           source=None):
  """Writes a verified SavedModel + TFLite export to `export_dir`, atomically.

  Args:
    model: the Keras landmark model.
    spec: its run spec (`config.RunSpec`); the codec decodes, and export_info.json records it.
    export_dir: target folder (replaced only after the new export is verified).
    quantize: one of `QUANTIZATIONS`, for `model.tflite`.
    calibration: list of uint8 [H, W, C] images for int8 calibration; the first two also serve
      as test images.
    test_images: uint8 [H, W, C] images to verify on; default: calibration images and
      `synthetic_test_images()`.
    source: dict recorded in `export_info.json` (e.g. model_dir and checkpoint).

  Returns:
    The `export_info.json` dict.
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"Unknown --quantize={quantize!r}; expected one of {QUANTIZATIONS}.")
  codec = spec.heatmap_codec()
  export_dir = os.path.abspath(export_dir)
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  for path in recover_interrupted(export_dir):
    _step(f"cleaned up after an interrupted export: {path}")
  n_real = 0
  if test_images is None:
    test_images = list(calibration[:2]) if calibration else []
    n_real = len(test_images)
    test_images += synthetic_test_images()
  start = time.time()
  tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(export_dir)}-", dir=parent)
  scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent)
  try:
    tflite_bytes = _write(model, codec, tmp_dir, scratch, quantize, calibration)
    _step(f"3/4 verifying on {len(test_images)} test images")
    verification = verify_export(tmp_dir, predictor_tf.KerasPredictor(model, codec),
                                 test_images, quantize, n_real)
    info = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source or {},
        "config": config_lib.to_json(spec),
        "codec": dataclasses.asdict(codec),
        "input_channels": int(model.input_shape[-1]),
        "quantization": quantize,
        "calibration_images": len(calibration) if calibration and quantize == "int8" else 0,
        "signatures": {name: {"inputs": {"images": spec_[0].dtype.name + str(spec_[0].shape)}}
                       for name, spec_ in serving.INPUT_SPECS.items()},
        "outputs": list(codec_lib.OUTPUT_KEYS),
        "tflite": {"file": TFLITE_FILE, "bytes": tflite_bytes, "input": "images uint8[1,H,W,C]"},
        "verification": verification,
        "versions": versions(),
        "export_seconds": round(time.time() - start, 1),
    }
    model_dir_lib.write_json(os.path.join(tmp_dir, INFO_FILE), info)
    _make_readable(tmp_dir)
    _fsync_tree(tmp_dir)  # the files reach the disk before the name points at them
    _step(f"4/4 installing {export_dir}")
    _swap_in(tmp_dir, export_dir)
  except (OSError, tf.errors.OpError) as e:  # a full disk, a file-size limit, ...
    shutil.rmtree(tmp_dir, ignore_errors=True)
    kept = ("the previous export is intact" if os.path.exists(export_dir)
            else "nothing was installed")
    raise ExportError(f"writing {tmp_dir} failed ({cli.message_of(e)}); {export_dir}: {kept}"
                      ) from None
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return info


def export_model_dir(model_dir, export_dir, checkpoint=None, quantize="none",
                     calibration_data=None, calibration_split="train", calibration_count=100):
  """Loads a checkpoint from a training directory and `export`s it. Returns the info dict."""
  model_dir_lib.read_spec(model_dir)  # Fails first, with the clearest message.
  name, path = model_dir_lib.resolve_checkpoint(model_dir, checkpoint)
  _step(f"loading {path}")
  model, spec = model_dir_lib.load_model(model_dir, name)
  calibration = None
  if calibration_data:
    # Without int8 the images only verify the export; two are enough.
    count = calibration_count if quantize == "int8" else 2
    calibration = calibration_images(calibration_data, calibration_split, count)
  elif quantize == "int8":
    raise ValueError("--quantize=int8 needs --calibration_data=<dataset dir> (the training "
                     "data, e.g. data/phantom) to calibrate activation ranges.")
  source = {"model_dir": os.path.abspath(model_dir), "checkpoint": name,
            "checkpoint_path": os.path.abspath(path),
            "calibration_data": os.path.abspath(calibration_data) if calibration_data else None,
            "calibration_split": calibration_split if calibration_data else None}
  return export(model, spec, export_dir, quantize, calibration, source=source)


FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("model_dir", None, "Training directory (config.json + *.keras).")
  flags.DEFINE_string("name", None, "Export name: writes <output_root>/<name>/. Default: the "
                      "model_dir's folder name.")
  flags.DEFINE_string("checkpoint", None, "Checkpoint to export (best_val_mre, best_val_loss, "
                      "latest, epoch_NNNN). Default: the first of best_val_mre, best_val_loss, "
                      "latest that exists.")
  flags.DEFINE_enum("quantize", "dynamic", QUANTIZATIONS, "TFLite quantization: none (float32), "
                    "float16 weights, dynamic (int8 weights, float activations: the default, "
                    "2.5x faster than float32 on CPU at the same val accuracy, "
                    "benchmarks/RESULTS.md), int8 (weights and activations, calibrated on "
                    "--calibration_data).")
  flags.DEFINE_string("calibration_data", None, "Dataset dir (data_prep.build output) whose "
                      "images calibrate int8 and verify the export.")
  flags.DEFINE_string("calibration_split", "train", "Split of --calibration_data to use.")
  flags.DEFINE_integer("calibration_images", 100, "How many images to calibrate with.")
  flags.DEFINE_string("output_root", "saved_models", "Folder that holds the exports.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required (a training directory).")
  name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.model_dir))
  if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
    raise app.UsageError(f"--name={name!r} must be a plain folder name (no '/', '\\', '..' or "
                         "leading '.'): the export goes to <output_root>/<name>.")
  export_dir = os.path.join(FLAGS.output_root, name)
  try:
    info = export_model_dir(FLAGS.model_dir, export_dir, FLAGS.checkpoint, FLAGS.quantize,
                            FLAGS.calibration_data, FLAGS.calibration_split,
                            FLAGS.calibration_images)
  except (ExportError, OSError, ValueError, KeyError, tf.errors.OpError) as e:
    print(f"[export] FAILED: {cli.message_of(e)}", file=sys.stderr, flush=True)
    return 1
  v = info["verification"]
  print(f"[export] wrote {os.path.abspath(export_dir)} ({info['source']['checkpoint']}, "
        f"tflite {info['tflite']['bytes'] / 1e6:.2f} MB, {FLAGS.quantize}) in "
        f"{info['export_seconds']} s")
  print(f"[export] drift vs Keras: SavedModel {v['savedmodel']['landmarks_px']:.4f} px / "
        f"{v['savedmodel']['aop_deg']:.4f} deg; TFLite {v['tflite']['landmarks_px']:.4f} px / "
        f"{v['tflite']['aop_deg']:.4f} deg" + (
            f" ({v['tflite_real']['landmarks_px']:.4f} px / {v['tflite_real']['aop_deg']:.4f} "
            f"deg on the {v['n_real']} real images; synthetic ones give flat heatmaps)"
            if v.get("tflite_real") else ""))
  print(f"[export] serve: saved_model_cli show --dir {export_dir} --all ; "
        f"predict: python -m aop_tf.predict --model={export_dir} --inputs=... --output=pred.csv")
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "export", errors=cli.EXPECTED_ERRORS + (ExportError,))
