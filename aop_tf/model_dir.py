"""Layout of a training directory and safe loading of its models.

A model directory holds:
  config.json            how the model was built and fed: {"model": build_unet kwargs,
                         "pipeline": {input_size, input_channels, heatmap_size, sigma_cells},
                         "decode": {method, blur_sigma_cells}, "flags": every training flag}
  latest.keras           last complete epoch, or where a stop signal came mid-epoch, with
                         optimizer state (for --resume)
  best_val_loss.keras    best validation loss
  best_val_mre.keras     best validation MRE
  epoch_NNNN.keras       periodic checkpoints
  state.json             {"epoch": last complete epoch (1-based), best metrics so far,
                         "partial": a mid-epoch save's epoch, batches and their logs}
  logs/                  TensorBoard event files
Every file is written to a temporary name (`.tmp-*`) in the same folder, flushed to disk and
renamed, so a kill (or a power cut) never leaves a half-written file under a final name; a kill
mid-write at most leaves a `.tmp-*` file, which `remove_stale_temp_files` deletes.
"""

import glob
import json
import os
import tempfile
import zipfile

import keras

from aop_tf import model as model_lib

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
CHECKPOINTS = ("best_val_mre", "best_val_loss", "latest")


def checkpoint_path(model_dir, which):
  """Path of checkpoint `which` (e.g. "latest", "best_val_mre", "epoch_0050")."""
  return os.path.join(model_dir, f"{which}.keras")


TEMP_PREFIX = ".tmp-"


def fsync_path(path):
  """Flushes a file (or a folder's entries) to disk; a no-op where the OS does not allow it."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _atomic_write(path, write_fn):
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
  os.close(fd)
  try:
    write_fn(tmp)
    fsync_path(tmp)  # The data reaches the disk before the name points at it.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_path(folder)  # ... and the rename itself survives a power cut.


def remove_stale_temp_files(folder):
  """Deletes the `.tmp-*` files an earlier, killed writer left in `folder`; returns their paths.

  Call it only while no other process writes to `folder` (e.g. when training starts).
  """
  removed = []
  for path in glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")):
    if os.path.isfile(path):
      os.remove(path)
      removed.append(path)
  return removed


def write_json(path, obj):
  """Writes `obj` as indented JSON, atomically."""
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
  _atomic_write(path, write)


def read_json(path):
  with open(path) as f:
    return json.load(f)


def save_model(model, path):
  """Saves a `.keras` file (weights, and optimizer state if compiled) atomically."""
  _atomic_write(path, model.save)


def read_config(model_dir):
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {model_dir} is not a training directory "
                            "(train one with `python -m aop_tf.train`).")
  try:
    return read_json(path)
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    raise ValueError(f"{path} is not valid JSON ({e}); restore it or retrain.") from None


def load_keras_file(path, compile=False):
  """`keras.saving.load_model` in safe mode, with one clear error for a file that will not load.

  Safe mode refuses to deserialise Python code (lambda layers, pickled objects); nothing in a
  `.keras` file is executed.

  Raises:
    ValueError naming the file: corrupt or truncated, not a Keras file, or needing unsafe code.
  """
  try:
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
  except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile, EOFError) as e:
    text = str(e).strip().splitlines()
    detail = text[0] if text else type(e).__name__
    if "safe_mode" in str(e) or "unsafe" in str(e).lower():
      advice = ("it needs to run Python code stored in the file, which safe mode refuses; only "
                "models saved by aop_tf are loaded")
    else:
      advice = ("it is corrupt, truncated or not a Keras model; use another checkpoint "
                "(e.g. --checkpoint=epoch_NNNN) or retrain")
    raise ValueError(f"{path}: cannot load ({type(e).__name__}: {detail[:300]}); "
                     f"{advice}.") from None


def load_model(model_dir, which=None, compile=False):
  """Loads a checkpoint with Keras safe mode (no arbitrary code, nothing unpickled).

  Args:
    model_dir: a training directory.
    which: checkpoint name; None takes the first of `CHECKPOINTS` that exists.
    compile: restore the optimizer too (for resuming training); False also turns a model trained
      with mixed precision into its float32 copy.

  Returns:
    (keras.Model, config dict).
  """
  config = read_config(model_dir)
  names = [which] if which else list(CHECKPOINTS)
  for name in names:
    path = checkpoint_path(model_dir, name)
    if os.path.exists(path):
      model = load_keras_file(path, compile=compile)
      if not compile:  # Inference and export compute in float32 (see model.float32_copy).
        model = model_lib.float32_copy(model, config.get("model", {}))
      return model, config
  raise FileNotFoundError(f"No checkpoint {names} in {model_dir}; has training finished an epoch?")
