"""Robustness of data preparation (issue 7): every bad input gets a clear answer, none is lost.

Each refused row names the CSV, its line and what was wrong; by default it is skipped and counted
(`written + skipped = read` per split), `strict=True` stops at the first one; file names that
escape the image folder are refused, whichever way they try.
"""

import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from aop_tf.io import images
from aop_tf.io import labels
from aop_tf.io.records import InputError, Record
from data_prep import build, masks

GOOD = '"(10, 5)","(50, 20)","(30, 30)"'  # PS1, PS2, FH1 inside a 60x40 image, AoP defined


def _gray(h=40, w=60):
  return (np.arange(h * w, dtype=np.uint32).reshape(h, w) % 251).astype(np.uint8)


def _png(image):
  return cv2.imencode(".png", image)[1].tobytes()


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def _png_header_only(width, height):
  """A tiny PNG that declares `width` x `height` 8-bit gray pixels (a decompression bomb)."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  chunk = b"IHDR" + ihdr
  return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
          struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


def _items(folder, csv_name="train.csv", encoding="auto", image_dir=None):
  rows = labels.read_rows(str(folder / csv_name), encoding)
  return list(labels.iter_records(rows, str(image_dir or folder), {}, "train"))


def _reasons(items):
  return [getattr(item, "reason", "ok") for item in items]


# ------------------------------------------------------------------------------------------------
# Rows: points, columns, duplicates.


@pytest.mark.parametrize("cell, reason, shown", [
    ('"(12, )"', "bad point", "(12, )"),
    ('"twelve, forty"', "bad point", "twelve, forty"),
    ('"(nan, 3)"', "bad point", "nan"),
    ('"(inf, 3)"', "bad point", "inf"),
    ('"(1e999, 3)"', "bad point", "not finite"),
    ('""', "bad point", "malformed point ''"),
    ('"(-3, 5)"', "point outside image", "outside the 60x40 image"),
    ('"(60, 5)"', "point outside image", "outside the 60x40 image"),
    ('"(10, 40)"', "point outside image", "outside the 60x40 image"),
])
def test_malformed_or_outside_points_name_file_line_column(tmp_path, cell, reason, shown):
  _write(tmp_path / "a.png", _png(_gray()))
  (tmp_path / "train.csv").write_text(f'Filename,PS1,PS2,FH1\na.png,{cell},"(50, 20)","(30, 30)"\n')
  (item,) = _items(tmp_path)
  assert isinstance(item, InputError) and item.reason == reason
  assert "train.csv line 2, column PS1" in str(item) and shown in str(item)


def test_edge_of_image_is_inside(tmp_path):
  _write(tmp_path / "a.png", _png(_gray()))
  (tmp_path / "train.csv").write_text(
      'Filename,PS1,PS2,FH1\na.png,"(-0.5, -0.5)","(59.5, 39.5)","(0, 39)"\n')
  (item,) = _items(tmp_path)
  assert isinstance(item, Record)


def test_missing_columns_and_short_rows(tmp_path):
  _write(tmp_path / "a.png", _png(_gray()))
  (tmp_path / "train.csv").write_text('Filename,PS1,PS2\na.png,"(1, 1)","(2, 2)"\n')
  with pytest.raises(ValueError, match=r"train.csv: missing column 'FH1' or 'AOP Tangency'"):
    labels.read_rows(str(tmp_path / "train.csv"))
  (tmp_path / "train.csv").write_text('Filename,PS1,PS1,PS2,FH1\n')
  with pytest.raises(ValueError, match="column 'PS1' appears 2 times"):
    labels.read_rows(str(tmp_path / "train.csv"))
  (tmp_path / "train.csv").write_text("")
  with pytest.raises(ValueError, match=r"train.csv: empty file \(no header line\)"):
    labels.read_rows(str(tmp_path / "train.csv"))
  # A row with fewer cells than the header: the missing cell is named.
  (tmp_path / "train.csv").write_text(f'Filename,PS1,PS2,FH1\na.png,"(10, 5)","(50, 20)"\n'
                                      f'a.png,{GOOD}\n\n,{GOOD}\n')
  items = _items(tmp_path)
  assert _reasons(items) == ["bad point", "ok", "bad filename"]  # blank lines are not rows
  assert "line 2, column FH1" in str(items[0]) and "got None" in str(items[0])
  assert "line 5: empty Filename" in str(items[2])


def test_duplicates_however_spelled(tmp_path):
  _write(tmp_path / "sub" / "a.png", _png(_gray()))
  (tmp_path / "train.csv").write_text("Filename,PS1,PS2,FH1\n" + "".join(
      f"{name},{GOOD}\n" for name in ("sub/a.png", "./sub/a.png", "sub//a.png", "sub\\a.png",
                                      " sub/a.png ")))
  items = _items(tmp_path)
  assert _reasons(items) == ["ok"] + ["duplicate filename"] * 4
  assert all("already used by train (train.csv line 2)" in str(e) for e in items[1:])


def test_unparseable_row_is_refused_and_the_next_rows_read(tmp_path):
  _write(tmp_path / "a.png", _png(_gray()))
  _write(tmp_path / "b.png", _png(_gray()))
  huge = "x" * 200_000  # over the csv module's field limit
  (tmp_path / "train.csv").write_text(f"Filename,PS1,PS2,FH1\n{huge},{GOOD}\na.png,{GOOD}\n"
                                      f'b.png,"(10, 5)","(50, 20)","(30, 30\n')  # open quote
  items = _items(tmp_path)
  # The open quote ends with its line: the row is refused, named, and takes no other row with it.
  assert _reasons(items) == ["malformed CSV row", "ok", "malformed CSV row"]
  assert "train.csv line 2: the CSV parser cannot read this row" in str(items[0])
  assert items[1].where.endswith("line 3")
  assert "train.csv line 4" in str(items[2]) and "quote" in str(items[2])


def test_an_unclosed_quote_does_not_swallow_the_next_rows(tmp_path):
  for name in ("a.png", "b.png", "c.png", "d.png"):
    _write(tmp_path / name, _png(_gray()))
  (tmp_path / "train.csv").write_text(
      f'Filename,PS1,PS2,FH1\na.png,{GOOD}\n"b.png,{GOOD}\nc.png,{GOOD}\nd.png,{GOOD}\n'
      f'e.png,"(1, 2)\n')
  items = _items(tmp_path)  # five rows in the file: five answers, in order
  assert _reasons(items) == ["ok", "malformed CSV row", "ok", "ok", "malformed CSV row"]
  assert [i.where.split()[-1] for i in items if hasattr(i, "where")] == ["2", "4", "5"]
  assert "line 3" in str(items[1])


# ------------------------------------------------------------------------------------------------
# Files: missing, empty, truncated, not images, odd pixel formats, too large.


def test_missing_empty_truncated_and_non_image_files(tmp_path):
  png = _png(_gray())
  jpeg = cv2.imencode(".jpg", _gray())[1].tobytes()
  _write(tmp_path / "empty.png", b"")
  _write(tmp_path / "trunc.png", png[: len(png) // 2])
  _write(tmp_path / "trunc.jpg", jpeg[:200])
  _write(tmp_path / "text.png", b"Filename,PS1\nthis is not an image\n")
  _write(tmp_path / "bomb.png", _png_header_only(60000, 60000))
  (tmp_path / "folder.png").mkdir()
  # A corrupt scan that OpenCV decodes anyway (filling in the damage): a stray marker inside its
  # scan data, which the structure check refuses (as TensorFlow's strict decoder does).
  corrupt = bytearray(jpeg)
  corrupt[-60] = 0xFF
  _write(tmp_path / "corrupt.jpg", bytes(corrupt))
  assert cv2.imdecode(np.frombuffer(bytes(corrupt), np.uint8), cv2.IMREAD_UNCHANGED) is not None
  names = ["missing.png", "empty.png", "trunc.png", "trunc.jpg", "text.png", "bomb.png",
           "folder.png", "corrupt.jpg"]
  (tmp_path / "train.csv").write_text("Filename,PS1,PS2,FH1\n" +
                                      "".join(f"{n},{GOOD}\n" for n in names))
  items = _items(tmp_path)
  assert _reasons(items) == ["missing image", "unreadable image", "unreadable image",
                             "unreadable image", "unreadable image", "unreadable image",
                             "not a regular file", "unreadable image"]
  for line, (name, item) in enumerate(zip(names, items), start=2):
    assert f"train.csv line {line}" in str(item) and name in str(item), str(item)
  assert "empty file" in str(items[1])
  assert "looks like png but is corrupt or truncated" in str(items[2])
  assert "not a PNG/JPEG/BMP/TIFF file" in str(items[4])
  assert "declares 60000x60000 pixels" in str(items[5])
  assert "looks like jpeg but is corrupt or truncated" in str(items[7])


# A 1x1 GIF (OpenCV writes none): header, colour table, graphic control, image, trailer.
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00"
       b"\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def _whole_files():
  """Valid files of each strictly checked format, in the variants that stress the checks."""
  gray, rgb = _gray(37, 53), cv2.cvtColor(_gray(37, 53), cv2.COLOR_GRAY2BGR)
  rgb[::3] = 255 - rgb[::3]
  files = {"png gray": _png(gray), "png 16-bit": _png(gray.astype(np.uint16) * 257),
           "png rgb": _png(rgb), "jpeg": cv2.imencode(".jpg", gray)[1].tobytes(),
           "jpeg progressive": cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
           "jpeg restarts": cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1],
           "bmp gray": cv2.imencode(".bmp", gray)[1], "bmp rgb": cv2.imencode(".bmp", rgb)[1],
           "gif": GIF}
  return {name: bytes(data) for name, data in files.items()}


def test_whole_files_pass_the_structure_check_and_every_truncation_fails():
  """Checked without decoding (an OpenCV build may fill in what is missing), for every cut."""
  check = images._check_strict  # pylint: disable=protected-access
  for name, data in _whole_files().items():
    kind = images.sniff_format(data)
    check(data, kind, name)
    if kind != "bmp":  # whose header declares its size: a BMP with more bytes is refused
      check(data + b"\x00" * 7, kind, name)  # bytes after the end are harmless, as to decoders
    for cut in range(1, len(data), max(1, len(data) // 400)):
      with pytest.raises(images.ImageError, match=f"{kind} but is corrupt or truncated"):
        check(data[:cut], kind, f"{name}[:{cut}]")


def test_damage_inside_png_and_jpeg_data_is_refused_saying_what():
  png, jpeg = _png(_gray()), cv2.imencode(".jpg", _gray())[1].tobytes()
  idat = png.index(b"IDAT") + 10
  flipped = png[:idat] + bytes([png[idat] ^ 0x10]) + png[idat + 1:]
  marker = jpeg[:-60] + b"\xff\x2c" + jpeg[-58:]  # a reserved marker inside the scan
  for data, kind, what in ((flipped, "png", "CRC error in the IDAT chunk"),
                           (marker, "jpeg", "unexpected marker 0x2c")):
    with pytest.raises(images.ImageError, match=what):
      images._check_strict(data, kind, "damaged")  # pylint: disable=protected-access

def test_encoded_size_reads_headers_without_decoding():
  gray = _gray(23, 31)
  for ext in (".png", ".jpg", ".bmp", ".tif", ".webp"):
    assert images.encoded_size(cv2.imencode(ext, gray)[1].tobytes()) == (31, 23), ext
  assert images.encoded_size(_png_header_only(70000, 3)) == (70000, 3)
  assert images.encoded_size(b"GIF89a\x10\x00\x20\x00rest") == (16, 32)
  for junk in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00\xff\xff\xff\xff", b"hello"):
    assert images.encoded_size(junk) is None


def test_odd_pixel_formats_become_8_bit_gray(tmp_path):
  gray = _gray()
  files = {
      "gray16.png": _png(gray.astype(np.uint16) * 257),
      "rgb16.png": _png(np.dstack([gray] * 3).astype(np.uint16) * 257),
      "rgba.png": _png(np.dstack([gray] * 3 + [np.full_like(gray, 7)])),
      "gray_alpha.png": None,
      "bgr.png": _png(np.dstack([gray] * 3)),
  }
  pil = pytest.importorskip("PIL.Image")
  buf = io.BytesIO()
  pil.fromarray(np.dstack([gray, np.full_like(gray, 99)]), "LA").save(buf, "PNG")
  files["gray_alpha.png"] = buf.getvalue()
  for fmt, name in (("JPEG", "cmyk.jpg"), ("TIFF", "cmyk.tif")):
    buf = io.BytesIO()
    pil.fromarray(gray).convert("CMYK").save(buf, fmt)
    files[name] = buf.getvalue()
  for name, data in files.items():
    _write(tmp_path / name, data)
  (tmp_path / "train.csv").write_text("Filename,PS1,PS2,FH1\n" +
                                      "".join(f"{n},{GOOD}\n" for n in files))
  items = _items(tmp_path)
  assert _reasons(items) == ["ok"] * len(files), [str(i) for i in items]
  for name, record in zip(files, items):
    assert record.image.dtype == np.uint8 and record.image.shape == (40, 60), name
    tolerance = 3.0 if name == "cmyk.jpg" else 0.0  # lossy JPEG
    assert np.abs(record.image.astype(float) - gray).mean() <= tolerance, name


# ------------------------------------------------------------------------------------------------
# Encodings.


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be-bom",
                                      "utf-32"])
def test_unicode_csvs_with_or_without_bom(tmp_path, encoding):
  _write(tmp_path / "é.png", _png(_gray()))
  text = f"Filename,PS1,PS2,FH1\né.png,{GOOD}\n"
  data = ("\ufeff" + text).encode("utf-16-be") if encoding == "utf-16-be-bom" else (
      text.encode(encoding))
  (tmp_path / "train.csv").write_bytes(data)
  (item,) = _items(tmp_path)
  assert isinstance(item, Record) and item.filename == "é.png"


def test_other_encodings_are_named_or_refused_with_the_line(tmp_path):
  _write(tmp_path / "é.png", _png(_gray()))
  (tmp_path / "train.csv").write_bytes(f"Filename,PS1,PS2,FH1\né.png,{GOOD}\n".encode("cp1252"))
  with pytest.raises(ValueError, match=r"train.csv line 2: not utf-8 text .*--csv_encoding"):
    _items(tmp_path)
  (item,) = _items(tmp_path, encoding="cp1252")
  assert isinstance(item, Record) and item.filename == "é.png"
  with pytest.raises(ValueError, match="unknown CSV encoding 'klingon'"):
    _items(tmp_path, encoding="klingon")
  # UTF-16 without a byte-order mark.
  (tmp_path / "train.csv").write_bytes(f"Filename,PS1,PS2,FH1\né.png,{GOOD}\n"
                                       .encode("utf-16-le"))
  with pytest.raises(ValueError, match="line 2: not utf-8 text .* looks like UTF-16 without"):
    _items(tmp_path)
  (item,) = _items(tmp_path, encoding="utf-16-le")
  assert isinstance(item, Record)
  (tmp_path / "train.csv").write_bytes(f"Filename,PS1,PS2,FH1\na.png,{GOOD}\n"
                                       .encode("utf-16-le"))
  with pytest.raises(ValueError, match="line 1: NUL characters in the header"):
    _items(tmp_path)


# ------------------------------------------------------------------------------------------------
# Paths that escape the image folder.


def test_names_escaping_the_image_folder_are_refused(tmp_path):
  folder = tmp_path / "data"
  _write(folder / "in.png", _png(_gray()))
  _write(folder / "sub" / "in2.png", _png(_gray()))
  outside = _write(tmp_path / "secret" / "out.png", _png(_gray()))
  os.symlink(outside, folder / "file_link.png")
  os.symlink(outside.parent, folder / "dir_link")
  os.symlink(folder / "in.png", folder / "inside_link.png")  # stays inside: fine
  escapes = ["../secret/out.png", "sub/../../secret/out.png", str(outside), "/etc/passwd",
             "C:\\Windows\\win.ini", "C:secret.png", "\\\\server\\share\\x.png",
             "sub\\..\\..\\secret\\out.png", "file_link.png", "dir_link/out.png"]
  odd = ["in\x00.png", "in\n.png", "x" * 300 + ".png"]
  (folder / "train.csv").write_text(
      "Filename,PS1,PS2,FH1\n" + "".join(f'"{n}",{GOOD}\n' for n in escapes + odd) +
      f"inside_link.png,{GOOD}\nsub/in2.png,{GOOD}\n")
  items = _items(folder)
  # The newline inside the quoted name makes two lines of the file, both refused.
  assert _reasons(items) == (["unsafe filename"] * len(escapes) +
                             ["bad filename", "malformed CSV row", "malformed CSV row",
                              "missing image", "ok", "ok"])
  for item in items[:len(escapes)]:
    assert "outside the image folder" in str(item)
  assert "control characters" in str(items[len(escapes)])


# ------------------------------------------------------------------------------------------------
# Whole builds: accounting, strict, empty inputs.


@pytest.fixture()
def messy(tmp_path):
  """A folder with good and bad rows of every kind in two splits."""
  folder = tmp_path / "messy"
  gray = _gray()
  for name in ("a.png", "b.png", "c.png", "d.png"):
    _write(folder / name, _png(gray))
  _write(folder / "rgba.png", _png(np.dstack([gray] * 4)))
  _write(folder / "broken.png", _png(gray)[:50])
  _write(tmp_path / "outside.png", _png(gray))
  (folder / "train.csv").write_bytes(("\ufeffFilename,PS1,PS2,AOP Tangency,comment\n" + "".join([
      f"a.png,{GOOD},ok\n",
      'b.png,"(12, )","(50, 20)","(30, 30)",bad point\n',
      f"b.png,{GOOD},fixed on a later row\n",
      f"a.png,{GOOD},duplicate\n",
      f"../outside.png,{GOOD},escape\n",
      f"broken.png,{GOOD},truncated\n",
      'rgba.png,"(10, 5)","(10, 5)","(30, 30)",degenerate\n',
      f"nothing.png,{GOOD},missing\n",
      f"rgba.png,{GOOD},ok\n",
  ])).encode("utf-8"))
  (folder / "val.csv").write_text("Filename,PS1,PS2,FH1\n" + "".join([
      f"c.png,{GOOD}\n", f"a.png,{GOOD}\n", 'd.png,"(99, 5)","(50, 20)","(30, 30)"\n']))
  return folder


def test_build_accounts_for_every_row(messy, tmp_path, capsys):
  target = build.build_dataset("csv", data_dir=str(messy), out_dir=str(tmp_path / "out"))
  printed = capsys.readouterr().out
  meta = tfds.builder_from_directory(target).info.metadata
  splits = meta["splits"]
  assert splits["train"] == {"read": 9, "written": 3, "skipped": {
      "bad point": 1, "duplicate filename": 1, "unsafe filename": 1, "unreadable image": 1,
      "degenerate landmarks": 1, "missing image": 1}}
  assert splits["val"] == {"read": 3, "written": 1, "skipped": {
      "duplicate filename": 1, "point outside image": 1}}
  for split in splits.values():
    assert split["read"] == split["written"] + sum(split["skipped"].values())
  assert len(meta["skipped_inputs"]) == 8
  assert all(" line " in s["message"] for s in meta["skipped_inputs"])
  assert "train          9        3        6" in printed
  assert "val            3        1        2" in printed


def test_strict_stops_at_the_first_bad_row(messy, tmp_path):
  with pytest.raises(InputError, match=r"train.csv line 3, column PS1: malformed point"):
    build.build_dataset("csv", data_dir=str(messy), out_dir=str(tmp_path / "strict"),
                        strict=True, verbose=False)
  assert not os.path.exists(tmp_path / "strict" / "aop_landmarks")


def test_empty_inputs(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="no train.csv/val.csv/test.csv in"):
    build.build_dataset("csv", data_dir=str(empty), out_dir=str(tmp_path / "o1"), verbose=False)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    build.build_dataset("csv", data_dir=str(tmp_path / "nope"), out_dir=str(tmp_path / "o2"),
                        verbose=False)
  (empty / "train.csv").write_text("Filename,PS1,PS2,FH1\n")  # header only
  with pytest.raises(FileNotFoundError, match="--image_dir .* is not a folder"):
    build.build_dataset("csv", data_dir=str(empty), image_dir=str(tmp_path / "nope"),
                        out_dir=str(tmp_path / "o3"), verbose=False)
  with pytest.raises(ValueError, match="(?s)no usable examples in any split.*only a header line"):
    build.build_dataset("csv", data_dir=str(empty), out_dir=str(tmp_path / "o4"), verbose=False)
  (empty / "train.csv").write_text(f"Filename,PS1,PS2,FH1\nghost.png,{GOOD}\n")
  with pytest.raises(ValueError, match=r"(?s)no usable examples .*ghost.png not found"):
    build.build_dataset("csv", data_dir=str(empty), out_dir=str(tmp_path / "o5"), verbose=False)
  # masks source: no images folder, or an empty one.
  with pytest.raises(FileNotFoundError, match="images is not a folder"):
    masks.split_filenames(str(tmp_path / "nope"), split_spec="train:1")
  (tmp_path / "m" / "images").mkdir(parents=True)
  (tmp_path / "m" / "masks").mkdir()
  with pytest.raises(ValueError, match="no usable examples in any split"):
    build.build_dataset("masks", data_dir=str(tmp_path / "m"), split_spec="train:1",
                        out_dir=str(tmp_path / "o6"), verbose=False)


def test_damaged_text_behind_a_byte_order_mark(tmp_path):
  data = bytearray(f"Filename,PS1,PS2,FH1\na.png,{GOOD}\n".encode("utf-32"))
  data[40:44] = b"\xff\xff\xff\xff"  # not a code point
  (tmp_path / "train.csv").write_bytes(bytes(data))
  with pytest.raises(ValueError, match="byte-order mark says utf-32 but the text is damaged"):
    _items(tmp_path)
