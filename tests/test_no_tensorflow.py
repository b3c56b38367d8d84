"""Inference on a `.tflite` model without TensorFlow (`pip install aop_tf`, no `[train]` extra).

`predict`, `evaluate` on images with a CSV, and the viewer run in subprocesses where importing
tensorflow, keras or tensorflow_datasets fails as if they were not installed (a `sitecustomize`
on PYTHONPATH puts a refusing finder first on `sys.meta_path`, and logs every attempt): they must
succeed without even trying, and write exactly what a normal run writes. A SavedModel, a training
directory and a dataset split need TensorFlow, and say so in one line.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from aop_tf import zoo
import helpers

BLOCKER = textwrap.dedent('''
    import os, sys

    class _NoTensorFlow:
      """Refuses TensorFlow, Keras and TFDS as if not installed; logs each attempt."""

      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ("tensorflow", "keras", "tensorflow_datasets", "tf_keras"):
          return None
        with open(os.environ["AOP_BLOCKED_LOG"], "a") as f:
          f.write(name + "\\n")
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, _NoTensorFlow())
''')
EXAMPLES = os.path.join(helpers.REPO, "examples", "psfhs")
TFLITE = os.path.join(zoo.ROOT, "psfhs", "model.tflite")

pytestmark = pytest.mark.skipif(not os.path.isfile(TFLITE),
                                reason="no shipped psfhs model (python -m aop_tf.zoo builds it)")


@pytest.fixture
def no_tf(tmp_path):
  """`run(args) -> CompletedProcess` of `python args` where TensorFlow cannot be imported, and
  `blocked()`: the names whose import was attempted."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(BLOCKER)
  log = tmp_path / "blocked.log"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), helpers.REPO]),
             AOP_BLOCKED_LOG=str(log), TF_CPP_MIN_LOG_LEVEL="2")

  class Runner:
    def run(self, args):
      return subprocess.run([sys.executable, *args], cwd=helpers.REPO, env=env, text=True,
                            capture_output=True, timeout=300)

    def blocked(self):
      return log.read_text().split() if log.exists() else []

  return Runner()


def _normal(args):
  """`python args` as usual (TensorFlow importable)."""
  env = dict(os.environ, PYTHONPATH=helpers.REPO, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, *args], cwd=helpers.REPO, env=env, text=True,
                        capture_output=True, timeout=300)


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def test_the_blocker_refuses_tensorflow(no_tf):
  out = no_tf.run(["-c", "import tensorflow"])
  assert out.returncode == 1 and "ModuleNotFoundError" in out.stderr
  assert no_tf.blocked() == ["tensorflow"]


@pytest.mark.parametrize("fmt", ["csv", "pseudo"])
def test_predict_on_the_shipped_model_needs_no_tensorflow(no_tf, tmp_path, fmt):
  outputs = {}
  for name, run in (("without", no_tf.run), ("normal", _normal)):
    path = str(tmp_path / f"{name}.csv")
    overlays = str(tmp_path / f"{name}_overlays")
    out = run(["-m", "aop_tf.predict", "--model=psfhs", f"--inputs={EXAMPLES}",
               f"--output={path}", f"--format={fmt}", f"--overlay_dir={overlays}"])
    assert out.returncode == 0, out.stderr
    outputs[name] = [_read(path)] + [_read(os.path.join(overlays, f))
                                     for f in sorted(os.listdir(overlays))]
  assert no_tf.blocked() == []
  assert len(outputs["without"]) == 7  # the CSV and six overlays
  assert outputs["without"] == outputs["normal"]


def test_evaluate_a_tflite_model_on_a_labels_csv_needs_no_tensorflow(no_tf, tmp_path):
  written = {}
  for name, run in (("without", no_tf.run), ("normal", _normal)):
    folder = tmp_path / name
    out = run(["-m", "aop_tf.evaluate", f"--model={TFLITE}", f"--images_dir={EXAMPLES}",
               f"--labels_csv={os.path.join(EXAMPLES, 'labels.csv')}", f"--output_dir={folder}",
               "--overlays=2"])
    assert out.returncode == 0, out.stderr
    pictures = sorted(os.listdir(folder / "overlays"))
    written[name] = [_read(folder / "per_image.csv")] + [_read(folder / "overlays" / p)
                                                          for p in pictures]
  assert no_tf.blocked() == []
  assert len(written["without"]) == 5  # the CSV, two overlays and their heatmap panels
  assert written["without"] == written["normal"]


def test_the_viewer_loads_and_runs_a_tflite_model_without_tensorflow(no_tf):
  script = textwrap.dedent("""
      import numpy as np
      from aop_tf.viewer import __main__, server, workspace  # pylint: disable=unused-import
      model = workspace.Model("psfhs").start()
      out = model.predict([np.zeros((96, 128, 1), np.uint8)])
      assert model.error is None and model.predictor.kind == "tflite", model.error
      print(out["landmarks"].shape)
  """)
  out = no_tf.run(["-c", script])
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().endswith("(1, 3, 2)")
  assert no_tf.blocked() == []


def test_what_needs_tensorflow_says_so_in_one_line(no_tf, tmp_path):
  saved_model = tmp_path / "export"
  saved_model.mkdir()
  (saved_model / "saved_model.pb").write_bytes(b"")
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text("{}")
  images = ["--inputs", EXAMPLES, "--output", str(tmp_path / "p.csv")]
  cases = [
      (["-m", "aop_tf.predict", f"--model={saved_model}", *images], "predict",
       f"--model={saved_model}: a SavedModel"),
      (["-m", "aop_tf.predict", f"--model={run_dir}", *images], "predict",
       f"--model={run_dir}: a training directory"),
      (["-m", "aop_tf.evaluate", f"--model={TFLITE}", f"--data_dir={tmp_path}"], "evaluate",
       "--data_dir (a built dataset)"),
      (["-m", "aop_tf.evaluate", f"--model={TFLITE}", f"--images_dir={EXAMPLES}",
        f"--labels_csv={os.path.join(EXAMPLES, 'labels.csv')}", "--decode_blur_sigma=0.77"],
       "evaluate", "decoding an export's heatmaps again"),
  ]
  for args, prog, what in cases:
    out = no_tf.run(args)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"{prog}: error: {what} needs TensorFlow: pip install 'aop_tf[train]'"), out.stderr
