"""Small models for the tests: a run spec of a tiny U-Net and a training directory holding it."""

import os
import signal

import keras
import numpy as np

from aop_tf import config
from aop_tf import model as model_lib
from aop_tf import model_dir as model_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 64x64 gray input, 4..16 channels, 16x16 heatmaps: builds and runs in well under a second.
TINY_FLAGS = dict(input_size=64, base_filters=4, depth=2, heatmap_size=16, sigma_cells=1.5,
                  decode_method="dark", decode_blur_sigma=1.0)


def tiny_spec(**flags):
  """The run spec of the tiny model, knobs changed by flag name."""
  return config.RunSpec().replace(**{**TINY_FLAGS, **flags})


def write_model_dir(folder, spec=None, seed=3, zero_heatmaps=False):
  """An untrained training directory (config.json + latest.keras) of `spec`; returns the model.

  `zero_heatmaps`: flat heatmaps, so every landmark decodes to the same cell (degenerate AoP).
  """
  spec = spec or tiny_spec()
  keras.utils.set_random_seed(seed)
  model = model_lib.build_unet(**spec.model_kwargs())
  if zero_heatmaps:
    head = model.get_layer("heatmap_logits")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
  os.makedirs(folder, exist_ok=True)
  model_dir_lib.save_model(model, model_dir_lib.checkpoint_path(str(folder), "latest"))
  model_dir_lib.write_spec(str(folder), spec)
  return model


class SignalAt(keras.callbacks.Callback):
  """Sends SIGTERM to this process after batch `batch` of epoch `epoch` (0-based)."""

  def __init__(self, epoch, batch):
    super().__init__()
    self.epoch, self.batch, self._current = epoch, batch, -1

  def on_epoch_begin(self, epoch, logs=None):
    self._current = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self._current == self.epoch and batch == self.batch:
      os.kill(os.getpid(), signal.SIGTERM)


def train_spec(data_dir, model_dir, **flags):
  """A 3-epoch run of a 64x64 model on the phantom (2 steps per epoch at batch 4)."""
  return config.RunSpec().replace(**{
      **dict(data_dir=data_dir, model_dir=str(model_dir), input_size=64, input_channels=1,
             base_filters=4, depth=2, heatmap_size=16, sigma_cells=1.0, learning_rate=1e-3,
             lr_schedule="step", lr_step_epochs=2, epochs=3, batch_size=4, checkpoint_every=2,
             num_tb_images=2, decode_method="dark", decode_blur_sigma=1.0, verbose=0),
      **flags})


# ------------------------------------------------------------------------------------------------
# Entry points run as `python -m <module>`, without paying TensorFlow's import each time.

# Libraries the entry points share, imported once by the runner (not the entry modules: runpy must
# find them unimported, as `python -m` does; nor data_prep, which one test checks is not loaded).
PRELOAD = ("tensorflow", "keras", "tensorflow_datasets", "cv2", "absl.app", "absl.flags",
           "aop_tf.config", "aop_tf.data", "aop_tf.model", "aop_tf.losses", "aop_tf.callbacks",
           "aop_tf.metrics", "aop_tf.serving", "aop_tf.predictor", "aop_tf.predictor_tf",
           "aop_tf.sources", "aop_tf.visualize", "aop_tf.model_dir", "aop_tf.cli",
           "aop_tf.io.labels")


def serve():
  """The runner process: preloads, then per request line forks a child that runs the entry point
  (`runpy`, as `python -m` does) with its stdout and stderr in files; answers one JSON line."""
  import importlib  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import runpy  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  import traceback  # pylint: disable=import-outside-toplevel
  for name in PRELOAD:
    importlib.import_module(name)
  requests, answers = sys.stdin, sys.stdout
  for line in requests:
    request = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      pid = os.fork()
      if pid == 0:  # the entry point
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        signal.alarm(request["timeout"])
        code = 0
        try:
          sys.argv = [request["module"], *request["argv"]]
          runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # pylint: disable=broad-except
          traceback.print_exc()
          code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
      _, status = os.waitpid(pid, 0)
      texts = []
      for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode("utf-8", "replace"))
    answers.write(json.dumps([os.waitstatus_to_exitcode(status), *texts]) + "\n")
    answers.flush()


class EntryPoints:
  """Runs `python -m <module> ARGS` in a forked child of one preloaded process (`serve`).

  `run(module, argv, cwd=REPO, env=None, timeout=300)` -> (exit code, stdout, stderr), as a
  subprocess would give them; a child that raised an uncaught exception exits 99.
  """

  def __init__(self):
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([REPO, tests, os.environ.get("PYTHONPATH", "")]))
    # Its own stderr (TensorFlow's start-up notes) is not any child's: dropped.
    self._proc = subprocess.Popen([sys.executable, "-c", "import helpers; helpers.serve()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)

  def run(self, module, argv, cwd=None, env=None, timeout=300):
    import json  # pylint: disable=import-outside-toplevel
    request = {"module": module, "argv": [str(a) for a in argv], "cwd": str(cwd or REPO),
               "env": dict(env or {}), "timeout": int(timeout)}
    self._proc.stdin.write(json.dumps(request) + "\n")
    self._proc.stdin.flush()
    code, stdout, stderr = json.loads(self._proc.stdout.readline())
    return code, stdout, stderr

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)
