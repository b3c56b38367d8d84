"""Tests for aop_tf.io.labels and aop_tf.io.images: IUGC CSVs, odd image files, bad rows."""

import os

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from aop_tf.io import images
from aop_tf.io import labels
from aop_tf.io.records import InputError, Record
from data_prep import build

HEADER = "Filename,PS1,PS2,AOP Tangency,AoP,comment\n"


def _gradient(h=40, w=60):
  return (np.arange(h * w, dtype=np.uint32).reshape(h, w) % 251).astype(np.uint8)


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


@pytest.fixture()
def iugc(tmp_path):
  """A small IUGC folder: odd image files and one CSV with good and bad rows."""
  folder = tmp_path / "iugc"
  gray = _gradient()
  png = cv2.imencode(".png", gray)[1].tobytes()
  _write(folder / "gray.png", png)
  _write(folder / "lying.jpg", png)  # PNG bytes under a .jpg name
  rgb = np.stack([gray, gray // 2, 255 - gray], -1)
  _write(folder / "rgb.png", cv2.imencode(".png", rgb)[1].tobytes())
  _write(folder / "real.jpg", cv2.imencode(".jpg", np.dstack([gray] * 3))[1].tobytes())
  _write(folder / "sub" / "rgba.png", cv2.imencode(".png", np.dstack([gray] * 3 + [gray]))[1]
         .tobytes())
  _write(folder / "deep.png", cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes())
  _write(folder / "broken.png", b"\x89PNG\r\n\x1a\nnot really")
  _write(tmp_path / "outside.png", png)
  os.symlink(tmp_path / "outside.png", folder / "link.png")
  rows = [
      'gray.png,"(10, 5)","(50.5, 20)","(30, 39.5)",1,ok',
      'lying.jpg,"(10, 5)","(50, 20)","(30, 30)",1,ok',
      'rgb.png,"(10, 5)","(50, 20)","(30, 30)",1,ok',
      'real.jpg,"(10, 5)","(50, 20)","(30, 30)",1,ok',
      'sub/rgba.png,"(10, 5)","(50, 20)","(30, 30)",1,ok',
      'deep.png,"(10, 5)","(50, 20)","(30, 30)",1,ok',
      'gray.png,"(11, 5)","(50, 20)","(30, 30)",1,duplicate',
      './real.jpg,"(11, 5)","(50, 20)","(30, 30)",1,duplicate spelled differently',
      'missing.png,"(10, 5)","(50, 20)","(30, 30)",1,',
      'rgb2.png,"(12, )","(50, 20)","(30, 30)",1,',
      'broken.png,"(10, 5)","(50, 20)","(30, 30)",1,',
      '../outside.png,"(10, 5)","(50, 20)","(30, 30)",1,',
      f'{tmp_path / "outside.png"},"(10, 5)","(50, 20)","(30, 30)",1,',
      'link.png,"(10, 5)","(50, 20)","(30, 30)",1,',
      'sub/rgba.png,"(10, 5)","(50, 20)","(30, 30)",1,',
  ]
  (folder / "train.csv").write_bytes(("\ufeff" + HEADER + "\n".join(rows) + "\n").encode("utf-8"))
  return folder


def test_reads_odd_images_and_refuses_bad_rows(iugc):
  rows = labels.read_rows(str(iugc / "train.csv"))
  assert len(rows) == 15 and rows[0].filename == "gray.png"  # BOM stripped from the header
  assert rows[0].texts["FH1"] == "(30, 39.5)"  # AOP Tangency column
  items = list(labels.iter_records(rows, str(iugc), {}, "train"))
  good = [i for i in items if isinstance(i, Record)]
  bad = [i for i in items if isinstance(i, InputError)]
  assert [r.filename for r in good] == ["gray.png", "lying.jpg", "rgb.png", "real.jpg",
                                        "sub/rgba.png", "deep.png"]
  gray = _gradient()
  for record in good:
    assert record.image.dtype == np.uint8 and record.image.shape == (40, 60)
    assert record.mask is None and record.landmarks.dtype == np.float32
  np.testing.assert_array_equal(good[0].image, gray)
  np.testing.assert_array_equal(good[1].image, gray)  # PNG despite the .jpg suffix
  np.testing.assert_array_equal(good[5].image, gray)  # 16-bit scaled back to 8 bits
  expected_rgb = cv2.cvtColor(np.stack([gray, gray // 2, 255 - gray], -1), cv2.COLOR_BGR2GRAY)
  np.testing.assert_array_equal(good[2].image, expected_rgb)
  assert np.abs(good[3].image.astype(int) - gray).mean() < 3  # lossy JPEG
  np.testing.assert_allclose(good[0].landmarks, [[10, 5], [50.5, 20], [30, 39.5]])
  reasons = [e.reason for e in bad]
  assert reasons == ["duplicate filename", "duplicate filename", "missing image", "bad point",
                     "unreadable image", "unsafe filename", "unsafe filename", "unsafe filename",
                     "duplicate filename"]
  assert "line 11, column PS1" in str(bad[3]) and "(12, )" in str(bad[3])
  assert "train.csv line 8" in str(bad[0]) and "line 2" in str(bad[0])


def test_point_outside_image_is_refused(tmp_path):
  _write(tmp_path / "a.png", cv2.imencode(".png", _gradient())[1].tobytes())
  (tmp_path / "val.csv").write_text(
      'Filename,PS1,PS2,FH1\na.png,"(59.5, 0)","(0, 39.5)","(60, 3)"\n', encoding="utf-8")
  items = list(labels.iter_records(labels.read_rows(str(tmp_path / "val.csv")),
                                       str(tmp_path), {}, "val"))
  assert len(items) == 1 and items[0].reason == "point outside image"
  assert "column FH1" in str(items[0]) and "60x40" in str(items[0])


def test_header_errors_name_the_file(tmp_path):
  path = tmp_path / "train.csv"
  path.write_text("Filename,PS1,PS2\nx.png,\"(1, 1)\",\"(2, 2)\"\n")
  with pytest.raises(ValueError, match=r"train.csv: missing column 'FH1' or 'AOP Tangency'"):
    labels.read_rows(str(path))


def test_find_split_csvs(tmp_path):
  for name in ("train.csv", "test.csv", "other.csv"):
    (tmp_path / name).write_text(HEADER)
  assert labels.find_split_csvs(str(tmp_path)) == {
      "train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
  assert labels.find_split_csvs(str(tmp_path), {"val": "other.csv"}) == {
      "val": str(tmp_path / "other.csv")}
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    labels.find_split_csvs(str(tmp_path), {"val": "nope.csv"})
  with pytest.raises(FileNotFoundError, match="--csv"):
    labels.find_split_csvs(str(tmp_path / "empty_dir_does_not_matter"))


@pytest.mark.parametrize("channels", [1, 3])
def test_a_large_bmp_is_checked_from_its_header_and_a_truncated_one_refused(channels):
  """Above LARGE_PIXELS a BMP is not decoded a second time by TensorFlow (300 MB for 100 MP RGB);
  its header says whether the file holds every pixel row, which OpenCV would fill in silently."""
  height, width = 4000, images.LARGE_PIXELS // 4000 + 8
  pixels = np.random.default_rng(0).integers(0, 255, (height, width, channels), np.uint8)
  data = cv2.imencode(".bmp", pixels)[1].tobytes()
  assert images.is_large(data)
  gray = images.decode_gray(data, "big.bmp")
  assert gray.shape == (height, width)
  with pytest.raises(images.ImageError, match="big.bmp.*truncated"):
    images.decode_gray(data[:-width * channels], "big.bmp")


def test_decode_gray_errors():
  with pytest.raises(images.ImageError, match="not a PNG/JPEG"):
    images.decode_gray(b"hello world", "x.png")
  with pytest.raises(images.ImageError, match="empty file"):
    images.decode_gray(b"", "x.png")
  assert images.sniff_format(b"\xff\xd8\xff\xe0rest") == "jpeg"


def test_build_csv_counts_and_strict(iugc, tmp_path, capsys):
  target = build.build_dataset("csv", data_dir=str(iugc), out_dir=str(tmp_path / "out"))
  printed = capsys.readouterr().out
  assert "train         15        6        9" in printed
  assert "Dataset directory (pass to training): " + target in printed
  b = tfds.builder_from_directory(target)
  assert b.info.splits["train"].num_examples == 6
  summary = b.info.metadata["splits"]["train"]
  assert summary["read"] == summary["written"] + sum(summary["skipped"].values())
  assert summary["skipped"] == {"duplicate filename": 3, "missing image": 1, "bad point": 1,
                                "unreadable image": 1, "unsafe filename": 3}
  ex = next(iter(b.as_dataset(split="train").skip(1).take(1).as_numpy_iterator()))
  assert ex["filename"].decode() == "lying.jpg" and not ex["has_mask"]
  assert ex["image"].shape == (40, 60, 1) and ex["mask"].max() == 0
  np.testing.assert_array_equal(ex["image"][..., 0], _gradient())
  assert ex["height"] == 40 and ex["width"] == 60
  with pytest.raises(InputError, match="duplicate"):
    build.build_dataset("csv", data_dir=str(iugc), out_dir=str(tmp_path / "strict"),
                        strict=True, verbose=False)
  lim = build.build_dataset("csv", data_dir=str(iugc), out_dir=str(tmp_path / "lim"),
                            csv={"val": str(iugc / "train.csv")}, limit=3, verbose=False)
  assert tfds.builder_from_directory(lim).info.splits["val"].num_examples == 3


def test_degenerate_rows_are_skipped(tmp_path):
  _write(tmp_path / "a.png", cv2.imencode(".png", _gradient())[1].tobytes())
  _write(tmp_path / "b.png", cv2.imencode(".png", _gradient())[1].tobytes())
  (tmp_path / "train.csv").write_text(
      'Filename,PS1,PS2,FH1\na.png,"(5, 5)","(5, 5)","(9, 3)"\nb.png,"(5, 5)","(1, 5)","(9, 3)"\n')
  target = build.build_dataset("csv", data_dir=str(tmp_path), out_dir=str(tmp_path / "o"),
                               verbose=False)
  meta = tfds.builder_from_directory(target).info.metadata
  assert meta["splits"]["train"] == {"read": 2, "written": 1,
                                     "skipped": {"degenerate landmarks": 1}}
  assert "line 2" in meta["skipped_inputs"][0]["message"]


def test_duplicate_of_a_refused_row_is_used(tmp_path):
  _write(tmp_path / "a.png", cv2.imencode(".png", _gradient())[1].tobytes())
  (tmp_path / "train.csv").write_text(
      'Filename,PS1,PS2,FH1\na.png,"(5, )","(1, 5)","(9, 3)"\na.png,"(5, 5)","(1, 5)","(9, 3)"\n'
      'a.png,"(5, 5)","(1, 5)","(9, 3)"\n')
  items = list(labels.iter_records(labels.read_rows(str(tmp_path / "train.csv")),
                                       str(tmp_path), {}, "train"))
  assert [getattr(i, "reason", "ok") for i in items] == ["bad point", "ok", "duplicate filename"]
  assert "already used by train (train.csv line 3)" in str(items[2])
