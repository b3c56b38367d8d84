"""Layout of a training directory and safe loading of its models.

A model directory holds:
  config.json            the run spec (`config.to_json`): every knob, by section
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

import contextlib
import fcntl
import glob
import os
import zipfile

import keras

from aop_tf import config as config_lib
from aop_tf import model as model_lib
from aop_tf import semi  # registers semi.MeanTeacher, so its checkpoints load
from aop_tf.io import files

CONFIG_FILE = config_lib.CONFIG_FILE
STATE_FILE = "state.json"
# A shipped model's float weights beside its model.tflite (`--init_from=<name>` fine-tunes them).
WEIGHTS_FILE = "weights.keras"
LOCK_FILE = ".lock"
CHECKPOINTS = ("best_val_mre", "best_val_loss", "latest")


def checkpoint_path(model_dir, which):
  """Path of checkpoint `which` (e.g. "latest", "best_val_mre", "epoch_0050")."""
  return os.path.join(model_dir, f"{which}.keras")


TEMP_PREFIX = files.TEMP_PREFIX


fsync_path = files.fsync_path
atomic_write = files.atomic_write


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


write_json = files.write_json
read_json = files.read_json


def save_model(model, path):
  """Saves a `.keras` file (weights, and optimizer state if compiled) atomically."""
  atomic_write(path, model.save)


@contextlib.contextmanager
def locked(model_dir):
  """Holds the training directory for one run: a second run on it is refused, naming the holder.

  The lock is an exclusive `flock` on `<model_dir>/.lock` (which also records the holder's PID).
  The kernel drops it when the holder ends, however it ends, so a killed run's lock never blocks
  the next one: the file left behind is simply taken over.

  Raises:
    config.ConfigError: another process holds the directory.
  """
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      raise config_lib.ConfigError(
          f"{model_dir} is in use by another training run (PID {holder}); wait for it or stop "
          "it, or train into another --model_dir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


def read_spec(model_dir):
  """The `config.RunSpec` in `<model_dir>/config.json` (the one reader of that file).

  Raises:
    FileNotFoundError: no config.json (not a training directory).
    config.ConfigError: not JSON, or not a run spec; the message names the file and the field.
  """
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {model_dir} is not a training directory "
                            "(train one with `python -m aop_tf.train`).")
  try:
    data = read_json(path)
  except files.FileError as e:
    raise config_lib.ConfigError(str(e)) from None
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    raise config_lib.ConfigError(f"{path} is not valid JSON ({e}); restore it or retrain.") from None
  return config_lib.from_json(data, path)


def write_spec(model_dir, spec):
  """Writes `spec` to `<model_dir>/config.json`, atomically (the one writer of that file)."""
  write_json(os.path.join(model_dir, CONFIG_FILE), config_lib.to_json(spec))


def resolve_checkpoint(model_dir, which=None):
  """`(name, path)` of checkpoint `which`, or of the first of `CHECKPOINTS` that exists.

  Raises:
    FileNotFoundError naming what was looked for.
  """
  if which and which.endswith(".keras"):
    which = which[:-len(".keras")]
  names = [which] if which else list(CHECKPOINTS)
  for name in names:
    path = checkpoint_path(model_dir, name)
    if os.path.exists(path):
      return name, path
  raise FileNotFoundError(f"No checkpoint {' / '.join(names)} (.keras) in {model_dir}: pass "
                          "--checkpoint=<name> of an existing <name>.keras, or train first.")


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
    compile: restore the optimizer too (for resuming training); False returns the network that
      predicts (a semi-supervised run's teacher or student, `semi.infer_with`), in float32 even if
      trained with mixed precision.

  Returns:
    (keras.Model, config.RunSpec).
  """
  spec = read_spec(model_dir)
  _, path = resolve_checkpoint(model_dir, which)
  model = load_keras_file(path, compile=compile)
  _check_input(model, spec, path)
  if not compile:  # Inference and export: one network, computing in float32 (model.float32_copy).
    if isinstance(model, semi.MeanTeacher):
      model = model.inference_network
    model = model_lib.float32_copy(model, spec.model_kwargs())
  return model, spec


def _weights_of(source, folder):
  """`(weights, where)` of an export's float weights (`WEIGHTS_FILE`: a shipped model), a training
  directory or a .keras file at `folder` (`source` resolved, e.g. a shipped model's name)."""
  shipped = os.path.join(folder, WEIGHTS_FILE) if os.path.isdir(folder) else None
  if shipped and os.path.isfile(shipped):
    return load_keras_file(shipped).get_weights(), shipped
  if os.path.isdir(folder) and os.path.isfile(os.path.join(folder, CONFIG_FILE)):
    return load_model(folder)[0].get_weights(), folder
  if os.path.isfile(folder) and folder.endswith(".keras"):
    model = load_keras_file(folder)
    if isinstance(model, semi.MeanTeacher):
      model = model.inference_network
    return model.get_weights(), folder
  raise FileNotFoundError(f"--init_from={source}: not a shipped model with float weights "
                          f"({WEIGHTS_FILE}), a training directory (config.json) or a .keras "
                          "file; pass one of those.")


def init_from(model, source, folder=None):
  """Loads the weights of `source` (`_weights_of`; `folder`: where it resolves, default itself)
  into a new run's `model` (both networks of a mean teacher); ConfigError in one line when the
  architectures differ. Returns where the weights came from."""
  weights, where = _weights_of(source, folder or source)
  targets = (tuple(model.networks.values()) if isinstance(model, semi.MeanTeacher)
             else (model,))
  for network in targets:
    want = [tuple(w.shape) for w in network.weights]
    got = [tuple(w.shape) for w in weights]
    if want != got:
      first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want),
                                                                                  len(got)))
      detail = (f"{len(got)} weight arrays against {len(want)}" if len(want) != len(got) else
                f"array {first} is {got[first]} against {want[first]}")
      raise config_lib.ConfigError(
          f"--init_from={source}: its architecture does not match this run's ({detail}); use "
          "the model flags it was trained with (its config.json) or another --init_from.")
    network.set_weights(weights)
  return where


def _check_input(model, spec, path):
  """Raises ConfigError when a checkpoint's input is not the one config.json describes."""
  taken = tuple(model.input_shape[1:])
  described = (spec.model.input_size, spec.model.input_size, spec.model.input_channels)
  if taken != described:
    raise config_lib.ConfigError(
        f"{path} takes inputs of {taken[0]}x{taken[1]}x{taken[2]} but config.json beside it "
        f"describes {described[0]}x{described[1]}x{described[2]} (input_size, input_channels); "
        "the two do not belong together: restore the run's config.json or retrain.")


def read_state(model_dir):
  """`state.json` of a training directory, or {} if there is none yet."""
  path = os.path.join(model_dir, STATE_FILE)
  return read_json(path) if os.path.exists(path) else {}


def restore(model, model_dir, steps_per_epoch, state):
  """Loads latest.keras (weights + optimizer state) into the compiled `model` to resume a run.

  Returns `(epochs, batches)`: the completed epochs, and the batches of the next epoch already
  trained (non-zero where a stop signal saved mid-epoch; `state["partial"]` records it). Repairs
  `state` where a kill fell between writing state.json and latest.keras.

  Raises:
    config.ConfigError: the checkpoint does not fit the model, or stopped where no state says.
  """
  path = checkpoint_path(model_dir, "latest")
  model.optimizer.build(model.trainable_variables)
  try:
    model.load_weights(path)
  except Exception as e:  # pylint: disable=broad-except  # another architecture: one line
    detail = type(e).__name__
    try:
      saved = tuple(load_keras_file(path).input_shape[1:])
      if saved != tuple(model.input_shape[1:]):
        detail = f"it takes {saved} inputs, these flags build {tuple(model.input_shape[1:])}"
    except ValueError:
      pass
    raise config_lib.ConfigError(f"{path} does not fit the model of these flags ({detail}); "
                                 "use a new --model_dir or the original flags.") from None
  iterations = int(model.optimizer.iterations.numpy())
  epoch, batches = divmod(iterations, steps_per_epoch)
  partial = state.get("partial") or {}
  if batches and (partial.get("epoch"), partial.get("batches"), partial.get(
      "steps_per_epoch")) != (epoch + 1, batches, steps_per_epoch):
    raise config_lib.ConfigError(
        f"{path} stopped after {iterations} steps, not a whole number of epochs of "
        f"{steps_per_epoch} steps nor the mid-epoch stop state.json records; --batch_size, "
        "--steps_per_epoch or the number of replicas changed? Use the original flags and devices "
        "or a new --model_dir.")
  if not batches:
    state.pop("partial", None)  # a kill between state.json and latest.keras of a mid-epoch save
  if epoch != state.get("epoch", epoch):
    # state.json is written before latest.keras; a kill in between leaves it an epoch ahead.
    print(f"Note: {path} holds epoch {epoch}, state.json says {state.get('epoch')}; "
          f"continuing after epoch {epoch}.")
    state["epoch"] = epoch
    state["history"] = [h for h in state.get("history", []) if h.get("epoch", 0) <= epoch]
  return epoch, batches
