"""Robustness to faults (issue 7): kills lose nothing, loading runs no untrusted code.

- Checkpoints and JSON are written atomically: a process SIGKILLed while it saves leaves the
  previous complete file under the final name (fast test: a writer killed at a random moment).
- Training SIGKILLed at a random step restarts from the last complete epoch and ends like an
  uninterrupted run (slow test: real `python -m aop_tf.train` subprocesses; the fast variant
  resumes in-process from the debris such a kill leaves).
- SIGTERM / Ctrl-C stop cleanly and a NaN loss stops with one line (slow CLI tests; the in-process
  versions are in tests/test_train.py).
- `.keras` files load in safe mode: a file carrying Python code is refused and the code never runs;
  nothing in the package unpickles.
"""

import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from aop_tf import config
from aop_tf import model_dir as model_dir_lib
from aop_tf import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
              PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _seed():
  """A random seed for this run, printed so that a failure can be replayed (AOP_FAULT_SEED)."""
  seed = int(os.environ.get("AOP_FAULT_SEED", random.SystemRandom().randrange(2**31)))
  print(f"AOP_FAULT_SEED={seed}")
  return random.Random(seed)


# ------------------------------------------------------------------------------------------------
# Atomic writes under SIGKILL.

_WRITER = r"""
import sys, numpy as np, keras
sys.path.insert(0, {repo!r})
from aop_tf import model_dir as m
folder = {folder!r}
inputs = keras.Input((8, 8, 1))
model = keras.Model(inputs, keras.layers.Conv2D(64, 3, padding="same")(inputs))
for k in range(1, 10**6):
  for w in model.weights:
    w.assign(np.full(w.shape, float(k), np.float32))
  m.save_model(model, m.checkpoint_path(folder, "latest"))
  m.write_json(folder + "/state.json", {{"epoch": k, "pad": "x" * 200000}})
  print("saved", k, flush=True)
"""


def test_sigkill_while_saving_never_leaves_a_corrupt_latest(tmp_path):
  rng = _seed()
  folder = str(tmp_path / "run")
  os.makedirs(folder)
  proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=REPO, folder=folder)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
  try:
    for line in proc.stdout:  # Wait for the first complete save, then kill at a random moment.
      if line.startswith("saved"):
        break
    time.sleep(rng.uniform(0.0, 1.0))
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  model = model_dir_lib.load_keras_file(model_dir_lib.checkpoint_path(folder, "latest"))
  values = {float(np.unique(np.asarray(w))[0]) for w in model.weights}
  assert len(values) == 1  # one complete save, not a mix of two
  state = model_dir_lib.read_json(os.path.join(folder, "state.json"))
  assert state["epoch"] >= 1 and len(state["pad"]) == 200000
  assert abs(state["epoch"] - values.pop()) <= 1  # killed between the two writes at most
  debris = set(os.listdir(folder)) - {"latest.keras", "state.json"}
  assert all(name.startswith(model_dir_lib.TEMP_PREFIX) for name in debris), debris
  removed = model_dir_lib.remove_stale_temp_files(folder)
  assert {os.path.basename(p) for p in removed} == debris
  assert sorted(os.listdir(folder)) == ["latest.keras", "state.json"]


# ------------------------------------------------------------------------------------------------
# Training killed and resumed.


def _config(data_dir, model_dir, **changes):
  return config.RunSpec().replace(**{
      **dict(data_dir=data_dir, model_dir=str(model_dir), input_size=64, input_channels=1,
             base_filters=4, depth=2, heatmap_size=16, sigma_cells=1.0, learning_rate=1e-3,
             lr_schedule="constant", epochs=2, batch_size=4, checkpoint_every=0, num_tb_images=0,
             decode_method="argmax", val_split="", verbose=0),
      **changes})


def _weights(path):
  return [np.asarray(w) for w in model_dir_lib.load_keras_file(path).weights]


@pytest.fixture(scope="module")
def reference_run(phantom_dir, tmp_path_factory):
  return train.train(_config(phantom_dir, tmp_path_factory.mktemp("runs") / "reference"))


class _Killed(BaseException):
  """Stands for SIGKILL: nothing after it runs, no handler catches it."""


@pytest.fixture(scope="module")
def resumed_after_debris(phantom_dir, tmp_path_factory):
  """A run "killed" right after the first of its two end-of-epoch-2 writes (latest.keras and
  state.json, whichever the trainer writes first) with a half-written temporary checkpoint beside
  them, as a SIGKILL at that moment leaves it; then the same run again."""
  run = tmp_path_factory.mktemp("runs") / "killed"
  real_save, real_write = model_dir_lib.save_model, model_dir_lib.write_json
  writes = {}

  def after_write(path):
    name = os.path.basename(path)
    if name in ("latest.keras", "state.json"):
      writes[name] = writes.get(name, 0) + 1
      if writes[name] == 2:
        with open(run / (model_dir_lib.TEMP_PREFIX + "abc123.keras"), "wb") as f:
          f.write(b"PK\x03\x04 half a zip")
        raise _Killed()

  def save_model(model, path):
    real_save(model, path)
    after_write(path)

  def write_json(path, obj):
    real_write(path, obj)
    after_write(path)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(model_dir_lib, "save_model", save_model)
    patch.setattr(model_dir_lib, "write_json", write_json)
    with pytest.raises(_Killed):
      train.train(_config(phantom_dir, run))
  assert sum(writes.values()) == 3  # both writes of epoch 1, the first of epoch 2
  return train.train(_config(phantom_dir, run))


def test_resume_from_the_debris_of_a_kill(reference_run, resumed_after_debris):
  """Fast variant of the SIGKILL test: the debris of a kill does not stop the next run, which
  ends with the weights of an uninterrupted run."""
  resumed = resumed_after_debris
  assert resumed.epochs_done == 2
  ours = _weights(model_dir_lib.checkpoint_path(resumed.model_dir, "latest"))
  ref = _weights(model_dir_lib.checkpoint_path(reference_run.model_dir, "latest"))
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(ours, ref)) <= 1e-6


def test_a_kill_between_checkpoint_and_state_loses_no_history(reference_run,
                                                              resumed_after_debris):
  assert resumed_after_debris.history["epoch"] == [1, 2]
  np.testing.assert_allclose(resumed_after_debris.history["loss"], reference_run.history["loss"],
                             rtol=1e-5)


def _train_cmd(data_dir, model_dir, epochs, *extra):
  return [sys.executable, "-m", "aop_tf.train",
          f"--flagfile={os.path.join(REPO, 'aop_tf', 'configs', 'smoke.cfg')}",
          f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--epochs={epochs}",
          "--steps_per_epoch=0", "--nocache", "--num_tb_images=0", "--checkpoint_every=0",
          "--val_every=1000", "--verbose=2", *extra]


def _lines(output):
  return [line for line in output.splitlines() if line.strip() and not line.startswith(NOISE)]


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume(phantom_dir, tmp_path):
  """`python -m aop_tf.train` SIGKILLed at a random step of a random epoch, then run again."""
  rng = _seed()
  epochs = 6
  reference = tmp_path / "reference"
  proc = subprocess.run(_train_cmd(phantom_dir, reference, epochs), capture_output=True,
                        text=True, env=_env(), cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  ref_state = model_dir_lib.read_json(str(reference / "state.json"))
  epoch_s = ref_state["train_seconds"] / epochs

  run = tmp_path / "killed"
  kill_after = rng.randint(1, epochs - 2)  # complete epochs before the kill epoch starts
  delay = rng.uniform(0.0, 1.0) * epoch_s  # then a random point of the next epoch
  proc = subprocess.Popen(_train_cmd(phantom_dir, run, epochs), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
  state_path = run / "state.json"
  deadline = time.monotonic() + 300
  try:
    while proc.poll() is None and time.monotonic() < deadline:
      try:
        if model_dir_lib.read_json(str(state_path))["epoch"] >= kill_after:
          break
      except (OSError, ValueError, KeyError):
        pass
      time.sleep(0.02)
    time.sleep(delay)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
  print(f"killed after epoch {kill_after} + {delay:.2f} s (epoch ~{epoch_s:.2f} s)")
  assert proc.returncode == -signal.SIGKILL, "training ended before the kill; slow it down"
  done = model_dir_lib.read_json(str(state_path))["epoch"]
  assert kill_after <= done < epochs
  model_dir_lib.load_keras_file(model_dir_lib.checkpoint_path(str(run), "latest"))

  proc = subprocess.run(_train_cmd(phantom_dir, run, epochs), capture_output=True, text=True,
                        env=_env(), cwd=REPO, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0 and "Traceback" not in out, out
  assert re.search(r"Resuming .* after epoch \d+", out) and "Done:" in out, out
  state = model_dir_lib.read_json(str(state_path))
  assert state["epoch"] == epochs
  # A kill between latest.keras and state.json loses that epoch's log line (not its training;
  # see test_a_kill_between_checkpoint_and_state_loses_no_history).
  logged = [h["epoch"] for h in state["history"]]
  assert logged == sorted(set(logged)) and logged[-1] == epochs and len(logged) >= epochs - 1
  ours = _weights(model_dir_lib.checkpoint_path(str(run), "latest"))
  ref = _weights(model_dir_lib.checkpoint_path(str(reference), "latest"))
  worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, ref))
  print(f"resumed vs uninterrupted: max |weight difference| = {worst:.3g}")
  assert worst <= 1e-5
  ref_loss = {h["epoch"]: h["loss"] for h in ref_state["history"]}
  for h in state["history"]:
    assert h["loss"] == pytest.approx(ref_loss[h["epoch"]], rel=1e-4), h


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_cleanly(phantom_dir, tmp_path, signum):
  run = tmp_path / "sig"
  proc = subprocess.Popen(_train_cmd(phantom_dir, run, 1000), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
  deadline = time.monotonic() + 300
  while not (run / "state.json").exists() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signum)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signum, out
  assert "Traceback" not in out and f"Stopped by {signal.Signals(signum).name}" in out, out
  epoch = model_dir_lib.read_json(str(run / "state.json"))["epoch"]
  assert epoch >= 1
  model_dir_lib.load_keras_file(model_dir_lib.checkpoint_path(str(run), "latest"))


@pytest.mark.slow
def test_nan_loss_is_one_line_and_keeps_the_checkpoint(phantom_dir, tmp_path):
  run = tmp_path / "nan"
  ok = subprocess.run(_train_cmd(phantom_dir, run, 1), capture_output=True, text=True,
                      env=_env(), cwd=REPO, timeout=600)
  assert ok.returncode == 0, ok.stdout + ok.stderr
  latest = model_dir_lib.checkpoint_path(str(run), "latest")
  with open(latest, "rb") as f:
    before = f.read()
  proc = subprocess.run(_train_cmd(phantom_dir, run, 2, "--learning_rate=1e35"),
                        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
  lines = [line for line in _lines(proc.stdout + proc.stderr) if "error" in line]
  assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
  assert len(lines) == 1 and "NaN/inf" in lines[0] and "(epoch 1) is kept" in lines[0], lines
  with open(latest, "rb") as f:
    assert f.read() == before


# ------------------------------------------------------------------------------------------------
# Untrusted model files.


def test_keras_files_with_code_are_refused_and_never_run(tmp_path):
  marker = tmp_path / "pwned"

  def payload(x):
    open(str(marker), "w").close()  # what a hostile file would do when loaded unsafely
    return x

  inputs = keras.Input((4,))
  model = keras.Model(inputs, keras.layers.Lambda(lambda x: payload(x) * 2.0)(inputs))
  model_dir = tmp_path / "run"
  os.makedirs(model_dir)
  path = model_dir_lib.checkpoint_path(str(model_dir), "latest")
  model.save(path)
  model_dir_lib.write_spec(str(model_dir), config.RunSpec())
  if marker.exists():
    marker.unlink()  # saving traced the lambda once
  with pytest.raises(ValueError, match="safe mode refuses"):
    model_dir_lib.load_model(str(model_dir))
  assert not marker.exists()


def test_corrupt_or_foreign_model_files_are_clear_errors(tmp_path):
  for name, data in (("truncated", b"PK\x03\x04" + b"\x00" * 20), ("empty", b""),
                     ("text", b"not a model at all")):
    path = str(tmp_path / f"{name}.keras")
    with open(path, "wb") as f:
      f.write(data)
    with pytest.raises(ValueError, match=f"{name}.keras: cannot load .*corrupt, truncated"):
      model_dir_lib.load_keras_file(path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    model_dir_lib.read_spec(str(tmp_path))


def test_nothing_in_the_package_unpickles_or_loads_unsafely():
  sources = glob.glob(os.path.join(REPO, "aop_tf", "**", "*.py"), recursive=True) + glob.glob(
      os.path.join(REPO, "data_prep", "**", "*.py"), recursive=True)
  forbidden = re.compile(r"\bimport pickle\b|\bpickle\.load|\bcloudpickle\b|\bdill\b|"
                         r"allow_pickle\s*=\s*True|safe_mode\s*=\s*False|"
                         r"enable_unsafe_deserialization|\beval\(|\bexec\(|marshal\.loads|"
                         r"yaml\.load\(|torch\.load")
  hits = []
  for path in sources:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if forbidden.search(line):
          hits.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
  assert not hits, hits
  loads = []
  for path in sources:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    loads += [m.group(0) for m in re.finditer(r"keras\.(saving\.)?load_model\([^)]*\)", text)]
  assert loads and all("safe_mode=True" in call for call in loads), loads


# ------------------------------------------------------------------------------------------------
# Exports.


def test_export_recovers_from_a_kill_between_its_two_renames(tmp_path):
  from aop_tf import export  # pylint: disable=import-outside-toplevel
  target = tmp_path / "saved_models" / "tiny"
  old = tmp_path / "saved_models" / ".old-tiny-k1ll3d"
  old.mkdir(parents=True)
  (old / "saved_model.pb").write_bytes(b"the previous export")
  unfinished = tmp_path / "saved_models" / ".tmp-tiny-h4lf"
  unfinished.mkdir()
  (tmp_path / "saved_models" / ".tmp-other-x").mkdir()  # another name's: left alone
  acted = export.recover_interrupted(str(target))
  assert sorted(os.path.basename(p) for p in acted) == [".old-tiny-k1ll3d", ".tmp-tiny-h4lf"]
  assert (target / "saved_model.pb").read_bytes() == b"the previous export"
  assert sorted(os.listdir(tmp_path / "saved_models")) == [".tmp-other-x", "tiny"]
  assert export.recover_interrupted(str(target)) == []  # nothing left to do


_EXPORTER = r"""
import sys
sys.path.insert(0, {repo!r})
import keras, numpy as np
from aop_tf import config, export
from aop_tf.model import build_unet
spec = config.RunSpec().replace(input_size=32, base_filters=2, depth=1, heatmap_size=16)
keras.utils.set_random_seed({seed})
for i in range({count}):
  export.export(build_unet(**spec.model_kwargs()), spec, {target!r},
                test_images=[np.full((40, 50, 1), 90, np.uint8)])
  print("exported", i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_export_keeps_the_previous_export(tmp_path):
  from aop_tf import export, predictor  # pylint: disable=import-outside-toplevel
  rng = _seed()
  target = str(tmp_path / "saved_models" / "tiny")
  first = subprocess.run([sys.executable, "-c", _EXPORTER.format(
      repo=REPO, seed=1, count=1, target=target)], capture_output=True, text=True, env=_env(),
      timeout=600)
  assert first.returncode == 0, first.stdout + first.stderr
  start = time.monotonic()
  proc = subprocess.Popen([sys.executable, "-c", _EXPORTER.format(
      repo=REPO, seed=2, count=100, target=target)], stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, env=_env())
  for line in proc.stdout:  # one export's duration, then a random point of the next ones
    if line.startswith("exported"):
      break
  one = time.monotonic() - start
  time.sleep(rng.uniform(0.0, 2.0) * one)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  export.recover_interrupted(target)
  model = predictor.load(target)  # a complete export, the previous or a new one
  out = model.predict([np.full((40, 50, 1), 90, np.uint8)])
  assert out["landmarks"].shape == (1, 3, 2)
  leftovers = [n for n in os.listdir(os.path.dirname(target))
               if n.startswith((".tmp-tiny-", ".old-tiny-"))]
  assert not leftovers, leftovers
