"""predict and evaluate on clips and DICOMs: the AoP trace follows the truth, every frame is a row,
a broken clip keeps what was predicted, and no patient attribute reaches any output.

The model is a tiny 64x64 U-Net trained here on 256 phantom images (about a minute on 2 cores);
the phantom clip's AoP moves 90 -> 140 -> 100 deg over 60 frames (`clip_files.phantom_clip`).
"""

import csv
import glob
import json
import os

import numpy as np
import pytest

from aop_tf import predict
from aop_tf import predictor
from aop_tf import trace
from aop_tf import train
from aop_tf.io import frames
import clip_files
import dicom_files
import helpers

SIZE = 64
# Measured: mean |smoothed - true| 1.34 deg (raw 1.30), max 3.3 deg, over 60 frames.
TRACE_MEAN_BOUND_DEG = 2.0


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
  from data_prep.build import build_dataset  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("clips")
  data_dir = build_dataset("phantom", out_dir=str(root / "data"), phantom_size=SIZE,
                           phantom_counts={"train": 256, "val": 16}, verbose=False)
  spec = helpers.train_spec(data_dir, root / "model", input_size=SIZE, heatmap_size=SIZE // 4,
                            base_filters=8, depth=3, epochs=15, batch_size=8, loss="softmax_ce",
                            heatmap_scale=1.0, sigma_cells=1.5, lr_schedule="cosine",
                            learning_rate=2e-3, augment=True)
  train.train(spec)
  return str(root / "model")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
  images, landmarks, aop = clip_files.phantom_clip(clip_files.aop_schedule((90, 140, 100), 60),
                                                   size=SIZE)
  path = str(tmp_path_factory.mktemp("clip") / "labour.avi")
  clip_files.write_video(path, images, fps=30)
  return {"path": path, "images": images, "landmarks": landmarks, "aop": aop}


def test_trace_follows_the_true_aop(clip_model, phantom):
  rows, failures = predict.predict_files(predictor.load(clip_model), [phantom["path"]],
                                         min_confidence=0.0, progress=False)
  assert not failures and len(rows) == 60
  assert [r["frame"] for r in rows] == list(range(60))
  np.testing.assert_allclose([r["time_s"] for r in rows], np.arange(60) / 30.0, atol=1e-3)
  summary = trace.summarise(rows)
  error = np.abs(np.array(summary["aop_smoothed_deg"]) - phantom["aop"])
  assert np.nanmean(error) <= TRACE_MEAN_BOUND_DEG, np.nanmean(error)
  assert abs(summary["key_frames"]["max"]["frame"] - 29) <= 4  # the schedule peaks mid-clip
  assert summary["aop_deg"]["max"] > 130 and summary["aop_deg"]["min"] < 100


def test_smoother_ignores_flagged_frames_and_outliers():
  aop = np.array([100.0, 101, 170, 102, 103, 30, 104, 105])
  keep = np.array([True, True, True, True, True, False, True, True])
  smoothed = trace.smooth(aop, keep, window=5)
  assert np.all(np.abs(smoothed - np.array([101, 101.5, 102, 102.5, 102.5, 103, 103.5, 104]))
                < 1.01)
  assert np.isnan(trace.smooth([1.0, 2.0], [False, False], 3)).all()


def test_cli_on_a_clip_and_a_dicom_writes_rows_summaries_and_no_patient_data(
    clip_model, phantom, tmp_path, entry_points):
  exam = str(tmp_path / "exam.dcm")
  dicom_files.write_dicom(exam, phantom["images"][:12], fps=20, pixel_spacing=(0.2, 0.25))
  broken = str(tmp_path / "broken.dcm")
  dicom_files.write_dicom(broken, phantom["images"][:6], fps=20)
  dicom_files.truncate(broken, 2 * SIZE * SIZE + 10)  # the last frames are cut off
  out = tmp_path / "pred.csv"
  code, stdout, stderr = entry_points.run("aop_tf.predict", [
      f"--model={clip_model}", f"--inputs={phantom['path']},{exam},{broken}", f"--output={out}",
      f"--overlay_dir={tmp_path / 'overlays'}", "--frames=every:2", "--smooth_frames=5"])
  assert code == 0, stdout + stderr
  with open(out) as f:
    rows = list(csv.DictReader(f))
  by_source = {}
  for row in rows:
    by_source.setdefault(os.path.basename(row["source"]), []).append(row)
  assert len(by_source["labour.avi"]) == 30 and len(by_source["exam.dcm"]) == 6
  assert [int(r["frame"]) for r in by_source["exam.dcm"]] == [0, 2, 4, 6, 8, 10]
  assert by_source["exam.dcm"][0]["filename"].endswith("exam.dcm#0")
  assert float(by_source["exam.dcm"][1]["time_s"]) == pytest.approx(0.1)
  ps_mm = float(by_source["exam.dcm"][0]["ps_length_mm"])
  ps_px = np.array([float(by_source["exam.dcm"][0][k]) for k in ("PS1_x", "PS1_y", "PS2_x",
                                                                   "PS2_y")])
  dx, dy = ps_px[0] - ps_px[2], ps_px[1] - ps_px[3]
  assert ps_mm == pytest.approx(np.hypot(0.25 * dx, 0.2 * dy), abs=2e-3)
  assert np.isnan(float(by_source["labour.avi"][0]["ps_length_mm"]))
  assert len(by_source["broken.dcm"]) >= 1  # frames before the cut are kept
  assert "broken.dcm" in stderr and "frame" in stderr and "kept" in stderr
  written = glob.glob(str(tmp_path / "pred_clips" / "*"))
  for stem in ("labour", "exam"):  # named by their paths under the inputs' common folder
    for suffix in (".json", "_trace.png", "_frames.png"):
      assert sum(p.endswith(stem + suffix) for p in written) == 1, (stem, suffix, written)
  with open(next(p for p in written if p.endswith("labour.json"))) as f:
    summary = json.load(f)
  assert summary["n_frames"] == 30 and summary["smooth_window_frames"] == 5
  assert len(os.listdir(tmp_path / "overlays")) == len(rows)
  texts = [stdout, stderr] + [open(p, errors="replace").read() for p in
                              glob.glob(str(tmp_path / "**" / "*"), recursive=True)
                              if p.endswith((".csv", ".json"))]
  for text in texts:
    for secret in dicom_files.SECRET_MARKERS:
      assert secret not in text


def test_a_truncated_video_keeps_the_frames_before_the_cut(clip_model, phantom, tmp_path):
  path = str(tmp_path / "cut.avi")
  clip_files.write_video(path, phantom["images"][:20], fps=30)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  rows, failures = predict.predict_files(predictor.load(clip_model), [path], progress=False)
  assert 0 < len(rows) < 20
  assert len(failures) == 1 and "cut.avi" in failures[0][1] and "kept" in failures[0][1]


def test_evaluate_reads_frames_named_in_an_iugc_csv(clip_model, phantom, tmp_path,
                                                    entry_points):
  folder = tmp_path / "exams"
  folder.mkdir()
  clip_files.write_video(str(folder / "labour.avi"), phantom["images"][:10], fps=30)
  with open(folder / "labels.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["Filename", "PS1", "PS2", "FH1"])
    for k in (0, 4, 9):
      writer.writerow([f"labour.avi#{k}", *(f"({x:.2f}, {y:.2f})" for x, y in
                                            phantom["landmarks"][k])])
  code, stdout, stderr = entry_points.run("aop_tf.evaluate", [
      f"--model={clip_model}", f"--images_dir={folder}", f"--labels_csv={folder / 'labels.csv'}",
      f"--output_dir={tmp_path / 'eval'}", "--overlays=0"])
  assert code == 0, stdout + stderr
  with open(tmp_path / "eval" / "per_image.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["filename"] for r in rows] == ["labour.avi#0", "labour.avi#4", "labour.avi#9"]
  assert [r["frame"] for r in rows] == ["0", "4", "9"]
  assert all(float(r["aop_error_deg"]) < 10 for r in rows)
  got = frames.iter_frames(str(folder / "labour.avi"))
  assert next(got).image.shape == (SIZE, SIZE, 1)
