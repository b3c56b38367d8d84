"""The pseudo-label filters (aop_tf/pseudo.py) on hand-made heatmaps, and pseudo-label CSVs
(`predict --format=pseudo`) read back by data_prep."""

import csv
import json
import os

import cv2
import numpy as np
import pytest

from aop_tf import codec as codec_lib
from aop_tf import config
from aop_tf import data
from aop_tf import predict
from aop_tf import pseudo
from data_prep import build

SEMI = config.SemiSpec(pseudo_min_confidence=0.5, pseudo_ps_length_512=(70, 200),
                       pseudo_aop_range_deg=(55, 180))
CODEC = codec_lib.HeatmapCodec(input_size=256, heatmap_size=64, sigma_cells=2.0,
                               decode_method="dark")
# A plausible 256x256 anatomy: symphysis 60 px long (120 in 512 space), AoP ~ 107 deg, FH1 below
# and to the right of PS1 (the clockwise side of PS1->PS2).
GOOD = np.array([[130.0, 40.0], [70.0, 44.0], [150.0, 150.0]], np.float32)


def _judge(landmarks, peak=1.0, size=256.0):
  """Heatmaps with peaks `peak` at `landmarks`, decoded, then judged."""
  maps = peak * CODEC.encode(np.asarray(landmarks, np.float32)[None], [size, size])["heatmaps"]
  out = CODEC.decode(maps, [[size, size]])
  verdict = pseudo.verdicts(out["landmarks"], out["confidence"], [[size, size]], SEMI)
  return {k: bool(np.asarray(v)[0]) for k, v in verdict.items()}


def test_plausible_confident_landmarks_are_kept():
  assert _judge(GOOD) == {"confident": True, "ps_length": True, "aop": True, "head_side": True,
                          "kept": True}


@pytest.mark.parametrize("landmarks,peak,failed", [
    (GOOD, 0.3, "confident"),                                            # a faint teacher
    ([[130.0, 40.0], [110.0, 42.0], [150.0, 150.0]], 1.0, "ps_length"),  # 20 px: 40 in 512
    ([[130.0, 40.0], [70.0, 44.0], [60.0, 60.0]], 1.0, "aop"),           # ~ 23 deg
    ([[130.0, 40.0], [70.0, 44.0], [150.0, 5.0]], 1.0, "head_side"),     # head above PS1->PS2
])
def test_each_filter_drops_what_it_should(landmarks, peak, failed):
  verdict = _judge(landmarks, peak)
  assert not verdict[failed] and not verdict["kept"]
  assert all(verdict[name] for name in pseudo.VERDICTS if name != failed), verdict


def test_lengths_are_measured_in_512_space_and_nan_is_never_kept():
  # The same anatomy on a 1024-px image: 4x longer in pixels, the same 120 px in 512 space.
  assert _judge(GOOD * 4, size=1024.0)["ps_length"]
  verdict = pseudo.verdicts(GOOD[None], np.array([[np.nan, 1.0, 1.0]]), [[256, 256]], SEMI)
  assert not verdict["confident"][0] and not verdict["kept"][0]


def _rows():
  """predict_files rows of two images: one plausible, one faint."""
  rows = []
  for name, peak in (("a.png", 0.9), ("b.png", 0.2)):
    row = {"filename": f"/data/scans/{name}", "width": 256, "height": 256, "aop_deg": 107.0}
    for k, landmark in enumerate(("PS1", "PS2", "FH1")):
      row[f"{landmark}_x"], row[f"{landmark}_y"] = (float(v) for v in GOOD[k])
      row[f"{landmark}_confidence"] = peak
    rows.append(row)
  return rows


def test_pseudo_label_csv_reads_back_as_labels(tmp_path):
  records = predict.pseudo_label_rows(_rows(), SEMI, "/data/scans")
  assert [(r["Filename"], r["kept"], r["confident"]) for r in records] == [
      ("a.png", 1, 1), ("b.png", 0, 0)]
  assert predict.select_for_labelling(records, 1) == ["b.png"]  # rejected first
  path = str(tmp_path / "pseudo.csv")
  predict.write_pseudo_labels(path, records, sort="confidence")
  with open(path) as f:
    written = list(csv.DictReader(f))
  assert [r["Filename"] for r in written] == ["b.png", "a.png"]  # least confident first
  assert written[1]["PS1"] == "(130, 40)" and written[1]["kept"] == "1"
  images = tmp_path / "images"
  images.mkdir()
  for name in ("a.png", "b.png"):
    cv2.imwrite(str(images / name), np.full((256, 256), 90, np.uint8))
  out = build.build_dataset("csv", data_dir=str(tmp_path), csv={"train": path},
                            image_dir=str(images), out_dir=str(tmp_path / "ds"), verbose=False)
  assert data.num_examples(out, "train") == 1
  with open(os.path.join(out, "metadata.json")) as f:
    assert json.load(f)["splits"]["train"]["skipped"] == {"pseudo-label rejected": 1}


def test_pseudo_labels_join_a_labeled_train_split(tmp_path):
  """`--pseudo_labels`: kept rows join the source's own train examples (which keep their masks);
  rejected rows are counted, and a labeled source's labels stay apart from it."""
  images = tmp_path / "scans"
  images.mkdir()
  for name in ("a.png", "b.png"):
    cv2.imwrite(str(images / name), np.full((256, 256), 90, np.uint8))
  path = str(tmp_path / "pseudo.csv")
  predict.write_pseudo_labels(path, predict.pseudo_label_rows(_rows(), SEMI, "/data/scans"))
  out = build.build_dataset("phantom", out_dir=str(tmp_path / "ds"), verbose=False,
                            phantom_counts={"train": 3, "val": 1}, pseudo_labels=path,
                            pseudo_image_dir=str(images))
  assert data.num_examples(out, "train") == 4 and data.num_examples(out, "val") == 1
  with open(os.path.join(out, "metadata.json")) as f:
    meta = json.load(f)
  assert meta["splits"]["train"]["skipped"] == {"pseudo-label rejected": 1}
  assert meta["pseudo_labels"] == path
  with pytest.raises(ValueError, match="use one"):
    build.build_dataset("phantom", out_dir=str(tmp_path / "ds2"), verbose=False,
                        pseudo_labels=path, labeled_list=path)
