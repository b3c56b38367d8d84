"""Robustness of the command lines (issue 7): a bad flag is one line, a non-zero exit, no traceback.

Every entry point (`data_prep.build`, `aop_tf.train`, `aop_tf.evaluate`, `aop_tf.export`,
`aop_tf.predict`) gets unknown flag values, unknown flags, a missing flagfile, missing required
flags and missing data or model directories.

Starting Python + TensorFlow once per case would take minutes, so the fast test runs each case in a
fork of one preloaded process (`helpers.EntryPoints`); the child runs the entry point exactly as
`python -m` does (`runpy`, `__main__`, the given argv). The slow test runs every case as a real
`python -m` subprocess.
"""

import os
import subprocess
import sys

import pytest

from aop_tf import config
from aop_tf import model_dir as model_dir_lib
from aop_tf.model import build_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = ("data_prep.build", "aop_tf.train", "aop_tf.evaluate", "aop_tf.export",
                "aop_tf.predict", "benchmarks.profile")
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
       "no images, DICOMs or videos"),
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


def test_every_entry_point_reports_bad_flags_in_one_line(workspace, entry_points):
  cases = _cases(workspace)
  assert {module for module, _, _ in cases} == set(ENTRY_POINTS)
  for module, argv, expected in cases:
    code, stdout, stderr = entry_points.run(module, argv, timeout=60)
    _check(module, argv, expected, code, stdout + stderr)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(34))
def test_real_subprocesses_report_bad_flags_in_one_line(workspace, index):
  cases = _cases(workspace)
  assert len(cases) == 34
  module, argv, expected = cases[index]
  proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                        cwd=REPO, env=_env(), timeout=300)
  _check(module, argv, expected, proc.returncode, proc.stdout + proc.stderr)
