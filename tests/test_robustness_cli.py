"""Robustness of the command lines (issue 7): a bad flag is one line, a non-zero exit, no traceback.

Every entry point (`data_prep.build`, `aop_tf.train`, `aop_tf.evaluate`, `aop_tf.export`,
`aop_tf.predict`) gets unknown flag values, unknown flags, a missing flagfile, missing required
flags and missing data or model directories.

Starting Python + TensorFlow once per case would take minutes, so the fast test starts one helper
process that imports the libraries once and forks a child per case; the child runs the entry point
exactly as `python -m` does (`runpy`, `__main__`, the given argv). The slow test runs every case as
a real `python -m` subprocess.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

from aop_tf import config
from aop_tf import model_dir as model_dir_lib
from aop_tf.model import build_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ("data_prep.build", "aop_tf.train", "aop_tf.evaluate", "aop_tf.export",
                "aop_tf.predict", "benchmarks.profile")
# Libraries the entry points share, imported once by the helper (not the entry modules: runpy
# must find them unimported, as `python -m` does).
PRELOAD = ("tensorflow", "keras", "tensorflow_datasets", "cv2", "aop_tf.data", "aop_tf.model",
           "aop_tf.losses", "aop_tf.callbacks", "aop_tf.metrics", "aop_tf.serving",
           "aop_tf.visualize", "aop_tf.model_dir", "aop_tf.cli", "aop_tf.config",
           "aop_tf.predictor", "aop_tf.io.labels",
           "data_prep.masks", "data_prep.phantom", "data_prep.tfds_builder")
# TensorFlow's C++ start-up notes, printed before any of our code runs.
NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")


def _cases(tmp):
  """(module, argv, expected text in the one line) for every entry point."""
  missing = os.path.join(tmp, "missing")
  flagfile = os.path.join(tmp, "no_such.cfg")
  bad_csv_dir = os.path.join(tmp, "bad_csv")
  model_dir = os.path.join(tmp, "model_dir")
  broken_dir = os.path.join(tmp, "broken_model_dir")
  return [
      ("data_prep.build", ["--source=bogus"], "--source=bogus"),
      ("data_prep.build", ["--phantom_train=many"], "--phantom_train"),
      ("data_prep.build", ["--no_such_flag=1"], "no_such_flag"),
      ("data_prep.build", [f"--flagfile={flagfile}"], "no_such.cfg"),
      ("data_prep.build", ["--source=csv", f"--data_dir={missing}"], "does not exist"),
      ("data_prep.build", ["--source=csv", f"--data_dir={bad_csv_dir}", "--strict",
                           f"--out_dir={tmp}/out"], "line 2, column PS1"),
      ("data_prep.build", ["--source=csv", f"--data_dir={bad_csv_dir}", "--csv_encoding=x",
                           f"--out_dir={tmp}/out"], "unknown CSV encoding"),
      ("data_prep.build", ["stray_argument"], "unexpected arguments"),
      ("aop_tf.train", ["--loss=l1"], "--loss"),
      ("aop_tf.train", ["--epochs=ten"], "--epochs"),
      ("aop_tf.train", [f"--flagfile={flagfile}"], "no_such.cfg"),
      ("aop_tf.train", [f"--data_dir={missing}", f"--model_dir={tmp}/run"], "does not exist"),
      ("aop_tf.evaluate", ["--decode_method=best", f"--model={model_dir}"], "--decode_method"),
      ("aop_tf.evaluate", [f"--flagfile={flagfile}"], "no_such.cfg"),
      ("aop_tf.evaluate", [f"--data_dir={missing}"], "--model"),
      ("aop_tf.evaluate", [f"--model={missing}", f"--data_dir={missing}"],
       f"--model={missing} does not exist"),
      ("aop_tf.evaluate", [f"--model={model_dir}", f"--data_dir={missing}"], "does not exist"),
      ("aop_tf.evaluate", [f"--model={model_dir}"], "--data_dir"),
      ("aop_tf.export", ["--quantize=int4"], "--quantize"),
      ("aop_tf.export", [f"--flagfile={flagfile}"], "no_such.cfg"),
      ("aop_tf.export", [], "--model_dir is required"),
      ("aop_tf.export", [f"--model_dir={missing}"], "config.json not found"),
      # Not a flag error: a progress line may come first, the error is the last line.
      ("aop_tf.export", [f"--model_dir={broken_dir}", f"--output_root={tmp}/exports"],
       "corrupt, truncated or not a Keras model"),
      ("aop_tf.predict", ["--format=xml"], "--format"),
      ("aop_tf.predict", [f"--flagfile={flagfile}"], "no_such.cfg"),
      ("aop_tf.predict", [f"--inputs={tmp}", f"--output={tmp}/p.csv"], "--model is required"),
      ("aop_tf.predict", [f"--model={missing}", f"--inputs={missing}", f"--output={tmp}/p.csv"],
       "no image files"),
      ("aop_tf.predict", [f"--model={missing}", f"--inputs={bad_csv_dir}",
                          f"--output={tmp}/p.csv"], "neither a training directory"),
      ("aop_tf.predict", ["--max_pixels=lots"], "--max_pixels"),
      ("benchmarks.profile", ["--interval_s=often"], "--interval_s"),
      ("benchmarks.profile", ["--gpu=maybe"], "--gpu"),
      ("benchmarks.profile", [f"--flagfile={flagfile}"], "no_such.cfg"),
      ("benchmarks.profile", [], "give a command"),
      ("benchmarks.profile", ["--", os.path.join(missing, "no_such_program")], "no_such_program"),
  ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  bad = tmp / "bad_csv"
  bad.mkdir()
  (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an "image" for predict's --inputs
  (bad / "train.csv").write_text('Filename,PS1,PS2,FH1\na.png,"(1, )","(2, 2)","(3, 1)"\n')
  spec = config.RunSpec().replace(input_size=32, base_filters=2, depth=1, heatmap_size=16,
                                  sigma_cells=1.0)
  model = build_unet(**spec.model_kwargs())
  model_dir_lib.save_model(model, model_dir_lib.checkpoint_path(str(tmp / "model_dir"), "latest"))
  model_dir_lib.write_spec(str(tmp / "model_dir"), spec)
  (tmp / "broken_model_dir").mkdir()
  model_dir_lib.write_spec(str(tmp / "broken_model_dir"), spec)
  (tmp / "broken_model_dir" / "latest.keras").write_bytes(b"PK\x03\x04 cut short")
  return str(tmp)


def _driver():
  """Helper process: reads [[module, argv], ...] as JSON from stdin, runs each in a forked child,
  writes [[exit code, output], ...] as JSON to stdout."""
  import importlib  # pylint: disable=import-outside-toplevel
  import runpy  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import traceback  # pylint: disable=import-outside-toplevel
  cases = json.load(sys.stdin)
  for name in PRELOAD:
    importlib.import_module(name)
  results = []
  for module, argv in cases:
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the entry point, its stdout and stderr into the pipe
      os.close(read_fd)
      os.dup2(write_fd, 1)
      os.dup2(write_fd, 2)
      signal.alarm(60)
      code = 0
      try:
        sys.argv = [module, *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
        code = 99
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
      chunk = os.read(read_fd, 65536)
      if not chunk:
        break
      chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    results.append([code, b"".join(chunks).decode("utf-8", "replace")])
  sys.stdout.write("\n@@RESULTS@@" + json.dumps(results))


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
              PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _lines(output):
  return [line for line in output.splitlines() if line.strip() and not line.startswith(NOISE)]


def _check(module, argv, expected, code, output):
  lines = _lines(output)
  where = f"python -m {module} {' '.join(argv)} -> exit {code}: {lines}"
  assert code not in (0, 99), where
  assert "Traceback" not in output, where
  # A progress line may come first (export's loading, profile's command).
  assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith(("[export] loading",
                                                                      "[profile] "))), where
  assert expected in lines[-1], where
  prefixes = (f"{module}: error:", f"{module.split('.')[-1]}: error:", "[export] FAILED:")
  assert lines[-1].startswith(prefixes), where


def test_every_entry_point_reports_bad_flags_in_one_line(workspace):
  cases = _cases(workspace)
  assert {module for module, _, _ in cases} == set(ENTRY_POINTS)
  script = (f"import sys; sys.path.insert(0, {REPO!r}); sys.path.insert(0, "
            f"{os.path.join(REPO, 'tests')!r}); import test_robustness_cli as t; t._driver()")
  proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(
      [[module, argv] for module, argv, _ in cases]), capture_output=True, text=True, cwd=REPO,
      env=_env(), timeout=600)
  assert "@@RESULTS@@" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = json.loads(proc.stdout.split("@@RESULTS@@")[-1])
  for (module, argv, expected), (code, output) in zip(cases, results):
    _check(module, argv, expected, code, output)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(34))
def test_real_subprocesses_report_bad_flags_in_one_line(workspace, index):
  cases = _cases(workspace)
  assert len(cases) == 34
  module, argv, expected = cases[index]
  proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                        cwd=REPO, env=_env(), timeout=300)
  _check(module, argv, expected, proc.returncode, proc.stdout + proc.stderr)
