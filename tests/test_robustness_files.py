"""Robustness, round two (issue 17): special files, bounded reads and memory, one-line errors, no
lost rows, locked training directories, duplicate files, untrusted models, `--inputs`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from aop_tf import config
from aop_tf import evaluate
from aop_tf import export
from aop_tf import model_dir as model_dir_lib
from aop_tf import predict
from aop_tf import predictor
from aop_tf import predictor_tf
from aop_tf import serving
from aop_tf import train
from aop_tf.io import files
from aop_tf.io import frames
from aop_tf.io import inputs
from aop_tf.io import labels
from data_prep import build
import helpers

REPO = helpers.REPO
GOOD = '"(30, 10)","(10, 12)","(40, 30)"'


def _png(folder, name, shape=(40, 50), value=90):
  path = os.path.join(folder, name)
  cv2.imwrite(path, np.full(shape, value, np.uint8))
  return path


@pytest.fixture
def special(tmp_path):
  """A folder with one good image, a FIFO and a link to /dev/zero named like images, a folder
  named like one."""
  folder = tmp_path / "in"
  folder.mkdir()
  _png(str(folder), "good.png")
  os.mkfifo(folder / "fifo.png")
  os.symlink("/dev/zero", folder / "zero.png")
  (folder / "dir.png").mkdir()
  return folder


def _alarm(seconds):
  """Fails the test instead of hanging it (a FIFO read blocks forever)."""
  def handler(signum, frame):
    raise AssertionError(f"still blocked after {seconds} s")
  signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)


def test_special_files_are_skipped_with_a_reason_never_read(special):
  _alarm(30)
  try:
    with pytest.raises(files.FileError, match="fifo.png: file is a FIFO"):
      files.read_bounded(str(special / "fifo.png"), 100)
    with pytest.raises(files.FileError, match="zero.png: file is a device"):
      files.read_bounded(str(special / "zero.png"), 100)
    paths, _ = inputs.find_inputs(str(special))
    failures = {}
    for path in paths:
      try:
        frames.read_still(path)
      except ValueError as e:
        failures[os.path.basename(path)] = str(e)
    assert set(failures) == {"fifo.png", "zero.png"}  # dir.png is no file: not listed at all
    # Data prep: the images source and a label CSV naming them.
    out = build.build_dataset("images", data_dir=str(special), out_dir=str(special.parent / "d"),
                              verbose=False)
    with open(os.path.join(out, "metadata.json")) as f:
      split = json.load(f)["splits"]["unlabeled"]
    assert split["written"] == 1 and sum(split["skipped"].values()) == 2
    (special / "train.csv").write_text("Filename,PS1,PS2,FH1\n" + "".join(
        f"{n},{GOOD}\n" for n in ("good.png", "fifo.png", "zero.png", "dir.png")))
    items = list(labels.iter_records(labels.read_rows(str(special / "train.csv")), str(special),
                                     {}, "train"))
    # (The link to /dev/zero also leaves the image folder, which is refused first.)
    assert [getattr(i, "reason", "ok") for i in items] == [
        "ok", "not a regular file", "unsafe filename", "not a regular file"]
    os.mkfifo(special / "labels.csv")
    with pytest.raises(ValueError, match="labels.csv: CSV is a FIFO"):
      labels.read_rows(str(special / "labels.csv"))
  finally:
    signal.alarm(0)


def test_large_images_are_shrunk_as_read_and_answered_in_their_own_pixels(tmp_path):
  path = _png(str(tmp_path), "big.png", shape=(2500, 3000))
  image, size = frames.read_still(path, reduce_pixels=1_000_000)
  assert size == (3000, 2500) and image.shape[0] * image.shape[1] <= 1_000_000
  assert abs(image.shape[1] / image.shape[0] - 3000 / 2500) < 0.01

  class Centre:  # answers the centre of whatever image it is given
    def predict(self, images):
      n = len(images)
      h, w = images[0].shape[:2]
      points = np.array([[(w - 1) / 2, (h - 1) / 2]] * 3, np.float32)
      return {"landmarks": np.tile(points, (n, 1, 1)), "aop_deg": np.zeros(n, np.float32),
              "confidence": np.ones((n, 3), np.float32),
              "heatmaps": np.zeros((n, 4, 4, 3), np.float32)}

  rows, failures = predict.predict_files(Centre(), [path], progress=False)
  assert not failures and (rows[0]["width"], rows[0]["height"]) == (3000, 2500)
  assert rows[0]["PS1_x"] == pytest.approx(1499.5, abs=1.0)
  assert rows[0]["PS1_y"] == pytest.approx(1249.5, abs=1.0)


def test_a_batch_is_bounded_by_its_pixels():
  runs = list(predictor._same_size_runs(  # pylint: disable=protected-access
      [np.zeros((100, 100, 1), np.uint8)] * 10, max_values=35_000))
  assert runs == [(0, 3), (3, 6), (6, 9), (9, 10)]
  assert list(predictor._same_size_runs(  # pylint: disable=protected-access
      [np.zeros((300, 300, 1), np.uint8)] * 2, max_values=35_000)) == [(0, 1), (1, 2)]


# --- one-line errors -------------------------------------------------------------------------------


def test_a_truncated_shard_is_named_with_the_command_that_rebuilds_it(phantom_dir, tmp_path):
  copy = str(tmp_path / "data")
  shutil.copytree(os.path.dirname(os.path.dirname(phantom_dir)), copy)
  dataset = os.path.join(copy, "aop_landmarks", "1.0.0")
  shard = next(os.path.join(dataset, n) for n in sorted(os.listdir(dataset)) if "-val." in n)
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  folder, _ = str(tmp_path / "run"), helpers.write_model_dir(str(tmp_path / "run"),
                                                             helpers.tiny_spec())
  with pytest.raises(ValueError, match=r"(?s)aop_landmarks-val\.tfrecord.*truncated or corrupt.*"
                     r"data_prep.build --source=phantom .*--overwrite"):
    evaluate.evaluate(folder, data_dir=dataset, split="val", overlays=0, progress=False,
                      verbose=False)


def test_model_dir_that_is_a_file_and_mismatched_sizes_say_so(phantom_dir, tmp_path):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(config.ConfigError, match="afile is a file; pass a folder"):
    train.train(helpers.train_spec(phantom_dir, tmp_path / "afile"))
  folder = str(tmp_path / "run")
  helpers.write_model_dir(folder, helpers.tiny_spec(input_size=32, heatmap_size=8))
  model_dir_lib.write_spec(folder, helpers.tiny_spec())  # now describes 64x64 inputs
  with pytest.raises(config.ConfigError, match="takes inputs of 32x32x1 but config.json beside "
                     "it describes 64x64x1"):
    model_dir_lib.load_model(folder)


def test_unusable_files_name_themselves(tmp_path):
  (tmp_path / "model.tflite").write_bytes(os.urandom(4096))
  with pytest.raises(ValueError, match="model.tflite: cannot load the TFLite model"):
    predictor.load(str(tmp_path / "model.tflite"))
  (tmp_path / "header.csv").write_text("Filename,PS1,PS2,FH1\n")
  with pytest.raises(ValueError, match="header.csv: only a header line, no rows"):
    evaluate.open_source(images_dir=str(tmp_path), labels_csv=str(tmp_path / "header.csv"))
  (tmp_path / "labels.csv").write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1])
  with pytest.raises(ValueError, match="labels.csv: this is a PNG image, not a CSV"):
    labels.read_rows(str(tmp_path / "labels.csv"))


_FULL_DISK = textwrap.dedent("""
    import resource, runpy, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    sys.argv = ["aop_tf.train"] + sys.argv[1:]
    runpy.run_module("aop_tf.train", run_name="__main__", alter_sys=True)
""")


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_file(phantom_dir, tmp_path):
  run = tmp_path / "run"
  args = [f"--flagfile={os.path.join(REPO, 'aop_tf', 'configs', 'smoke.cfg')}",
          f"--data_dir={phantom_dir}", f"--model_dir={run}", "--base_filters=16", "--depth=3",
          "--verbose=0", "--num_tb_images=0"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", _FULL_DISK, *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=300)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("train: error:")]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert ".keras: writing failed (File too large); nothing was written" in lines[0]
  assert not [n for n in os.listdir(run) if n.startswith(model_dir_lib.TEMP_PREFIX)]


# --- nothing lost ------------------------------------------------------------------------------


def test_a_second_run_on_the_same_directory_is_refused_and_a_dead_holders_lock_taken(tmp_path):
  folder = tmp_path / "run"
  folder.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import fcntl, os, sys, time
      fd = os.open({str(folder / model_dir_lib.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
      fcntl.flock(fd, fcntl.LOCK_EX)
      os.write(fd, str(os.getpid()).encode())
      print("held", flush=True)
      time.sleep(600)
  """)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(config.ConfigError, match=f"in use by another training run \\(PID "
                       f"{holder.pid}\\)"):
      with model_dir_lib.locked(str(folder)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with model_dir_lib.locked(str(folder)):  # the killed run's lock file is taken over
    with open(folder / model_dir_lib.LOCK_FILE) as f:
      assert f.read().strip() == str(os.getpid())


def test_the_same_image_under_two_names_is_used_once(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  _png(str(images), "a.png")
  _png(str(images), "b.png", value=100)
  os.symlink(images / "a.png", images / "a_again.png")
  (tmp_path / "train.csv").write_text(f"Filename,PS1,PS2,FH1\na.png,{GOOD}\nb.png,{GOOD}\n")
  (tmp_path / "val.csv").write_text(f"Filename,PS1,PS2,FH1\na_again.png,{GOOD}\n")
  with pytest.raises(ValueError, match="val.csv line 2: .*a_again.png is the same file as one "
                     r"already used by train \(train.csv line 2\)"):
    build.build_dataset("csv", data_dir=str(tmp_path), out_dir=str(tmp_path / "ds"),
                        verbose=False, strict=True)


# --- untrusted models, names, scratch --------------------------------------------------------


def test_a_savedmodel_that_writes_files_is_refused_unless_trusted(tmp_path):
  victim = tmp_path / "written.txt"

  class Sneaky(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8)])
    def serve_images(self, images):
      tf.io.write_file(str(victim), "gotcha")
      n = tf.shape(images)[0]
      return {"landmarks": tf.zeros([n, 3, 2]), "aop_deg": tf.zeros([n]),
              "confidence": tf.zeros([n, 3]), "heatmaps": tf.zeros([n, 4, 4, 3])}

  module = Sneaky()
  folder = str(tmp_path / "sneaky")
  tf.saved_model.save(module, folder, signatures={"serve_images": module.serve_images})
  with pytest.raises(ValueError, match="uses ops no aop_tf export uses \\(WriteFile\\)"):
    predictor.load(folder)
  assert not victim.exists()
  trusted = predictor.load(folder, trust_model=True)
  trusted.predict([np.zeros((8, 8, 1), np.uint8)])
  assert victim.read_text() == "gotcha"  # what --trust_model lets through


def test_our_exports_use_only_allowed_ops(tmp_path):
  for spec in (helpers.tiny_spec(), helpers.tiny_spec(seg_classes=3, loss="softmax_ce",
                                                      fh1_method="tangent", norm="group")):
    folder = str(tmp_path / spec.model.norm)
    model = helpers.write_model_dir(str(tmp_path / f"run_{spec.model.norm}"), spec)
    serving.serving_archive(model, spec.heatmap_codec()).write_out(folder, verbose=False)
    loaded = tf.saved_model.load(folder)
    for name in serving.SIGNATURES:
      assert not predictor_tf.graph_ops(loaded.signatures[name]) - predictor_tf.ALLOWED_OPS, name


def test_export_names_stay_inside_the_root_and_dead_scratch_is_cleaned(tmp_path, entry_points):
  code, _, stderr = entry_points.run("aop_tf.export", ["--model_dir=x", "--name=../escape",
                                                       f"--output_root={tmp_path}"])
  assert code == 2 and "--name='../escape' must be a plain folder name" in stderr
  dead = tmp_path / f"{export.SCRATCH_PREFIX}999999999-abc"  # no such PID
  alive = tmp_path / f"{export.SCRATCH_PREFIX}{os.getpid()}-def"
  old = tmp_path / f"{export.SCRATCH_PREFIX}xyz"  # from before the PID was in the name
  for folder in (dead, alive, old):
    folder.mkdir()
  acted = export.recover_interrupted(str(tmp_path / "tiny"))
  assert sorted(acted) == sorted([str(dead), str(old)]) and alive.exists()


# --- --inputs ----------------------------------------------------------------------------------


def test_inputs_repeat_read_list_files_and_keep_the_comma_form(tmp_path):
  one = _png(str(tmp_path), "scan,1.png")  # a comma in the name
  two = _png(str(tmp_path), "two.png")
  three = _png(str(tmp_path), "three.png")
  (tmp_path / "list.txt").write_text(f"# scans\n{one}\n{two}\n")
  assert inputs.find_inputs([one, two])[0] == sorted([one, two])
  assert inputs.find_inputs([f"@{tmp_path / 'list.txt'}"])[0] == sorted([one, two])
  assert inputs.find_inputs([f"{two},{three}"])[0] == sorted([two, three])
