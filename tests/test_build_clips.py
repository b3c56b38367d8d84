"""data_prep on clips: videos, multi-frame DICOMs and frame folders as unlabeled images (frame
selection, near-duplicates counted and dropped on request), and label CSVs naming frames."""

import json
import os

import cv2
import numpy as np
from pydicom import uid as uids

import dicom_files
from aop_tf import data
from aop_tf.io import frames
from data_prep import build, unlabeled

SIDE = 64
# Scene k of a clip: a fixed texture with a bright square at column 6 + 8k. Consecutive equal
# scenes are identical frames (MJPG codes equal input equally): near-duplicates, mean absolute
# difference 0; different scenes differ by ~12 gray levels on the 64x64 copies.
VIDEO_SCENES = (0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5)
DICOM_SCENES = (0, 1, 0, 0, 0, 2)


def _scene(k):
  image = np.random.default_rng(7).integers(30, 90, (SIDE, SIDE)).astype(np.uint8)
  image[24:40, 6 + 8 * k:22 + 8 * k] = 220
  return image


def _write_avi(path, scenes):
  """An MJPG .avi of the given scenes, written with OpenCV's own MJPG encoder."""
  writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"),
                           25.0, (SIDE, SIDE), True)
  assert writer.isOpened()
  for k in scenes:
    writer.write(cv2.cvtColor(_scene(k), cv2.COLOR_GRAY2BGR))
  writer.release()
  return str(path)


def _recordings(folder):
  """A video, a multi-frame DICOM, a folder of numbered frames, a still, and a DICOM whose
  third frame is corrupt."""
  os.makedirs(folder / "clipdir")
  _write_avi(folder / "a.avi", VIDEO_SCENES)
  dicom_files.write_dicom(str(folder / "exam.dcm"), [_scene(k) for k in DICOM_SCENES], fps=10)
  for i in range(5):
    cv2.imwrite(str(folder / "clipdir" / f"frame_{i + 1:03d}.png"), _scene(i))
  cv2.imwrite(str(folder / "still.png"), _scene(5))
  dicom_files.write_dicom(str(folder / "broken.dcm"), [_scene(k) for k in range(4)],
                          transfer_syntax=uids.RLELossless, bad_frames=(2,))


def _reader_gray(path, index):
  with frames.open_source(path) as source:
    return unlabeled.gray(source.frame(index).image, path)


def _summary(dataset_dir):
  with open(os.path.join(dataset_dir, "metadata.json")) as f:
    return json.load(f)


def test_clips_become_unlabeled_frames_with_near_duplicates_counted(tmp_path):
  folder = tmp_path / "rec"
  _recordings(folder)
  out = build.build_dataset("images", data_dir=str(folder), out_dir=str(tmp_path / "ds"),
                            clip_dirs=True, frames="every:2", verbose=False)
  examples = {ex["filename"].decode(): ex for ex in
              data.load_split(out, "unlabeled").as_numpy_iterator()}
  expected = ([f"a.avi#{i}" for i in range(0, 12, 2)] + ["broken.dcm#0"]
              + [f"clipdir#{i}" for i in (0, 2, 4)] + [f"exam.dcm#{i}" for i in (0, 2, 4)]
              + ["still.png"])
  assert list(examples) == expected  # natural order of the sources, frames in clip order
  for name, ex in examples.items():
    path, index = frames.split_frame_name(name)
    source = str(folder / path)
    want = _reader_gray(source, index or 0) if index is not None else cv2.imread(source, 0)
    np.testing.assert_array_equal(ex["image"][..., 0], want, err_msg=name)
    assert np.isnan(ex["landmarks"]).all() and not ex["has_mask"]
  np.testing.assert_array_equal(examples["exam.dcm#2"]["image"][..., 0], _scene(0))
  summary = _summary(out)
  assert summary["splits"]["unlabeled"] == {"read": 15, "written": 14,
                                            "skipped": {"unreadable frame": 1}}
  clips = {c["clip"]: c for c in summary["clips"]}
  assert list(clips) == ["a.avi", "broken.dcm", "clipdir", "exam.dcm"]
  # every:2 reads scenes 0 0 1 3 3 4 of the video (two repeats) and 0 0 0 of the DICOM (two).
  assert clips["a.avi"] == {"clip": "a.avi", "frames_read": 6, "near_duplicates": 2,
                            "threshold": 1.0, "dropped": False, "stopped": None}
  assert (clips["exam.dcm"]["frames_read"], clips["exam.dcm"]["near_duplicates"]) == (3, 2)
  assert (clips["clipdir"]["frames_read"], clips["clipdir"]["near_duplicates"]) == (3, 0)
  assert "broken.dcm: frame 2" in clips["broken.dcm"]["stopped"]
  (message,) = [m["message"] for m in summary["skipped_inputs"]]
  assert "frame 2" in message and "frames read before it are kept" in message


def test_near_duplicates_dropped_on_request_and_summarised(tmp_path, entry_points):
  """The command line: generated flags, the dropped frames counted, one summary line per clip."""
  folder = tmp_path / "rec"
  _recordings(folder)
  os.remove(folder / "broken.dcm")
  code, stdout, stderr = entry_points.run("data_prep.build", [
      "--source=images", f"--data_dir={folder}", f"--out_dir={tmp_path / 'ds'}", "--clip_dirs",
      "--drop_near_duplicates", "--near_duplicate_threshold=2.5", "--workers=1"])
  assert code == 0, stderr[-2000:]
  assert "clip a.avi: 12 frames read, 6 near-duplicates (< 2.5 mean abs diff), dropped" in stdout
  assert "clip exam.dcm: 6 frames read, 2 near-duplicates (< 2.5 mean abs diff), dropped" in stdout
  assert "clip clipdir: 5 frames read, 0 near-duplicates (< 2.5 mean abs diff), dropped" in stdout
  out = stdout.strip().splitlines()[-1].split(": ", 1)[1]
  names = [ex["filename"].decode() for ex in data.load_split(out, "unlabeled").as_numpy_iterator()]
  assert [n for n in names if n.startswith("a.avi")] == [
      "a.avi#0", "a.avi#3", "a.avi#5", "a.avi#6", "a.avi#10", "a.avi#11"]  # first of each scene
  assert [n for n in names if n.startswith("exam")] == [
      "exam.dcm#0", "exam.dcm#1", "exam.dcm#2", "exam.dcm#5"]
  split = _summary(out)["splits"]["unlabeled"]
  assert split == {"read": 24, "written": 16,
                   "skipped": {unlabeled.DROPPED_REASON: 8}}  # not listed one by one
  assert "Skipped inputs" not in stdout


def test_label_csv_naming_frames_of_a_video_and_a_dicom(tmp_path):
  folder = tmp_path / "iugc"
  os.makedirs(folder / "clips")
  video = _write_avi(folder / "clips" / "scan.avi", range(6))
  exam = dicom_files.write_dicom(str(folder / "clips" / "exam.dcm"),
                                 [_scene(k) for k in (5, 4, 3, 2)])
  names = ["clips/scan.avi#3", "clips/exam.dcm#1", "clips/scan.avi#5", "clips/exam.dcm#2"]
  rows = [f'{name},"({10 + i}, 20)","(30, {25 + i})","(40, 50)"' for i, name in enumerate(names)]
  (folder / "train.csv").write_text("Filename,PS1,PS2,FH1\n" + "\n".join(rows) + "\n")
  out = build.build_dataset("csv", data_dir=str(folder), out_dir=str(tmp_path / "ds"),
                            verbose=False)
  examples = list(data.load_split(out, "train").as_numpy_iterator())
  assert [ex["filename"].decode() for ex in examples] == names
  for i, ex in enumerate(examples):
    path, index = frames.split_frame_name(names[i])
    source = video if path.endswith(".avi") else exam
    np.testing.assert_array_equal(ex["image"][..., 0], _reader_gray(source, index))
    np.testing.assert_array_equal(ex["landmarks"], [[10 + i, 20], [30, 25 + i], [40, 50]])
    assert (ex["width"], ex["height"]) == (SIDE, SIDE) and np.isfinite(ex["aop_deg"])
  np.testing.assert_array_equal(examples[1]["image"][..., 0], _scene(4))  # DICOM: lossless
  assert _summary(out)["splits"]["train"] == {"read": 4, "written": 4, "skipped": {}}
