"""Layout of a training directory and safe loading of its models.

A model directory holds:
  config.json            how the model was built and fed: {"model": build_unet kwargs,
                         "pipeline": {input_size, input_channels, heatmap_size, sigma_cells},
                         "decode": {method, blur_sigma_cells}, "flags": every training flag}
  latest.keras           last complete epoch, with optimizer state (for --resume)
  best_val_loss.keras    best validation loss
  best_val_mre.keras     best validation MRE
  epoch_NNNN.keras       periodic checkpoints
  state.json             {"epoch": last complete epoch (1-based), best metrics so far}
  logs/                  TensorBoard event files
Every file is written to a temporary name in the same folder and renamed, so a kill never leaves a
half-written file under a final name.
"""

import json
import os
import tempfile

import keras

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
CHECKPOINTS = ("best_val_mre", "best_val_loss", "latest")


def checkpoint_path(model_dir, which):
  """Path of checkpoint `which` (e.g. "latest", "best_val_mre", "epoch_0050")."""
  return os.path.join(model_dir, f"{which}.keras")


def _atomic_write(path, write_fn):
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
  os.close(fd)
  try:
    write_fn(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


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
  return read_json(path)


def load_model(model_dir, which=None, compile=False):
  """Loads a checkpoint with Keras safe mode (no arbitrary code, nothing unpickled).

  Args:
    model_dir: a training directory.
    which: checkpoint name; None takes the first of `CHECKPOINTS` that exists.
    compile: restore the optimizer too (for resuming training).

  Returns:
    (keras.Model, config dict).
  """
  config = read_config(model_dir)
  names = [which] if which else list(CHECKPOINTS)
  for name in names:
    path = checkpoint_path(model_dir, name)
    if os.path.exists(path):
      return keras.saving.load_model(path, compile=compile, safe_mode=True), config
  raise FileNotFoundError(f"No checkpoint {names} in {model_dir}; has training finished an epoch?")
