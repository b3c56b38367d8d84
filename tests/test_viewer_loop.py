"""The loop the viewer closes, once end to end with a tiny model: predict -> open in the viewer ->
correct a landmark -> save -> `data_prep.build --source=csv` -> `aop_tf.train --init_from` on the
saved labels."""

import csv
import os
import shutil

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from aop_tf import LANDMARK_NAMES
from aop_tf import train
from aop_tf.io import points
from aop_tf.viewer import server
import clip_files
import helpers
from test_viewer import Client

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "psfhs")
TINY = dict(input_size=64, input_channels=1, base_filters=4, depth=2, heatmap_size=16,
            sigma_cells=1.0, decode_method="dark", decode_blur_sigma=1.0)


def example_labels():
  """{file name: [[x, y] x 3]} of the six example images (their real PSFHS labels)."""
  with open(os.path.join(EXAMPLES, "labels.csv"), newline="") as f:
    return {row["Filename"]: [list(points.parse_point(row[n])) for n in LANDMARK_NAMES]
            for row in csv.DictReader(f)}


def correct_and_save(trained, inputs, corrections, predicted, truth_of):
  """Opens `inputs` in a viewer of `trained`, checks that its results are predict's, and saves
  the true landmarks (`truth_of(item name, frame)`) of every frame."""
  viewer = server.Viewer(trained, inputs, corrections).start()
  try:
    client = Client(viewer)
    for item in client.json("GET", "/api/items")[1]:
      for row in client.json("GET", f"/api/items/{item['id']}/timeline")[1]:
        if item["name"] in predicted:
          want = predicted[item["name"]]
          assert row["landmarks"][2] == pytest.approx(
              [float(want["FH1_x"]), float(want["FH1_y"])], abs=1e-3)
        status, label = client.json("POST", "/api/labels", {
            "item": item["id"], "frame": row["index"],
            "landmarks": truth_of(item["name"], row["index"])})
        assert status == 200 and label["corrected"], label
  finally:
    viewer.stop()


def check_dataset(dataset, labels, clip_names):
  """The built train split holds every saved label, the clip frames' as PNGs beside the CSV."""
  info = next(r for r, _, names in os.walk(dataset) if "dataset_info.json" in names)
  builder = tfds.builder_from_directory(info)
  assert builder.info.splits["train"].num_examples == len(labels) + len(clip_names)
  for example in tfds.as_numpy(builder.as_dataset(split="train")):
    name = os.path.basename(example["filename"].decode())
    source = clip_names[int(name.rsplit("_f", 1)[1][:5])] if "_f0" in name else name
    np.testing.assert_allclose(example["landmarks"], labels[source], atol=1e-3)


def test_predict_view_correct_save_build_and_fine_tune(phantom_dir, entry_points, tmp_path):
  trained = str(tmp_path / "trained")
  train.train(helpers.train_spec(phantom_dir, trained, epochs=1))
  scans = tmp_path / "scans"
  scans.mkdir()
  labels = example_labels()
  for name in labels:
    shutil.copy(os.path.join(EXAMPLES, name), scans / name)
  clip = str(tmp_path / "clip.avi")
  clip_names = sorted(labels)[:3]
  clip_files.write_video(clip, [cv2.imread(os.path.join(EXAMPLES, n), 0) for n in clip_names])

  code, out, err = entry_points.run("aop_tf.predict", [f"--model={trained}", f"--inputs={scans}",
                                                       f"--output={tmp_path / 'pred.csv'}"])
  assert code == 0, (out, err)
  with open(tmp_path / "pred.csv", newline="") as f:
    predicted = {os.path.basename(r["filename"]): r for r in csv.DictReader(f)}

  corrections = str(tmp_path / "work" / "corrections.csv")
  correct_and_save(trained, [str(scans), clip], corrections, predicted,
                   lambda name, i: labels[clip_names[i] if name == "clip.avi" else name])

  dataset = str(tmp_path / "dataset")
  code, out, err = entry_points.run("data_prep.build", [
      "--source=csv", f"--csv=train:{corrections}",
      f"--image_dir={os.path.dirname(corrections)}", f"--out_dir={dataset}"])
  assert code == 0, (out, err)
  check_dataset(dataset, labels, clip_names)

  tuned = str(tmp_path / "tuned")
  code, out, err = entry_points.run("aop_tf.train", [
      *[f"--{k}={v}" for k, v in TINY.items()], f"--data_dir={dataset}", f"--model_dir={tuned}",
      f"--init_from={trained}", "--val_split=", "--epochs=1", "--batch_size=4",
      "--num_tb_images=0", "--verbose=0"], timeout=600)
  assert code == 0, (out, err)
  assert "Initialised from" in out
  assert os.path.isfile(os.path.join(tuned, "latest.keras"))
