"""IUGC-format label CSVs: a folder of images plus one CSV per split.

CSV columns `Filename,PS1,PS2,FH1` (FH1 may be called `AOP Tangency`; other columns are ignored;
header names match case-insensitively), points as `"(x, y)"` strings in original-image pixels.
Files are read as UTF-8 with or without BOM, UTF-16/32 with a BOM, or in the encoding named by
`encoding` (e.g. "cp1252" for an Excel export). Images may be PNG or JPEG whatever their suffix
says, gray, RGB, RGBA, CMYK or 16-bit; they are stored as 8-bit gray at their original size.

Every refused row becomes an `InputError` naming the CSV, line, column and value: malformed or
out-of-image points, rows the CSV parser cannot split, missing or unreadable images, file names
that escape the image folder (`../`, absolute paths, symlinks resolving outside) and duplicates
(the first accepted row wins), and rows a pseudo-label CSV marks `kept` = 0. Whole-file problems
(not text in the encoding, missing column) are a ValueError naming the file and line.
"""

import codecs
import collections
import csv
import itertools
import os
import re

import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf import geometry
from aop_tf.io import files
from aop_tf.io import frames
from aop_tf.io import images
from aop_tf.io import parallel
from aop_tf.io import points
from aop_tf.io.records import SPLITS, InputError, Record

FILENAME_COLUMN = "Filename"
# A pseudo-label CSV (`aop_tf.predict --format=pseudo`) says in this column whether the filters
# kept a row; a row marked 0 is refused ("pseudo-label rejected"), counted like any refused row.
KEPT_COLUMN = "kept"
# Accepted header names per landmark (first match wins), compared case-insensitively.
COLUMN_ALIASES = {"PS1": ("PS1",), "PS2": ("PS2",), "FH1": ("FH1", "AOP Tangency")}

Row = collections.namedtuple("Row", "csv_path line filename texts error", defaults=(None,))
Row.__doc__ = """One CSV row: `line` 1-based in the file, `texts` {landmark name: cell text};
`error`: why the CSV parser could not split the row (None for a parsed row)."""

# Byte-order marks and the codec that reads past them; UTF-32 before UTF-16 (same first bytes).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def default_image_dir(data_dir):
  """`<data_dir>/images` if that folder exists (PSFHS layout), else `data_dir`."""
  sub = os.path.join(data_dir, "images")
  return sub if os.path.isdir(sub) else data_dir


def find_split_csvs(data_dir, csv_map=None, required=True):
  """{split: CSV path}: `csv_map` paths (relative to the cwd, else to `data_dir`), or the
  `train.csv`, `val.csv`, `test.csv` present in `data_dir`.

  Raises FileNotFoundError for a named CSV that does not exist, or (when `required`) when no CSV
  is found at all.
  """
  found = {}
  if csv_map:
    for split, path in csv_map.items():
      candidates = [path] if os.path.isabs(path) else [path, os.path.join(data_dir or "", path)]
      existing = [p for p in candidates if os.path.isfile(p)]
      if not existing:
        raise FileNotFoundError(f"--csv {split}:{path}: no such file (looked in the current "
                                f"folder and in {data_dir})")
      found[split] = existing[0]
    return found
  for split in SPLITS:
    path = os.path.join(data_dir, f"{split}.csv")
    if os.path.isfile(path):
      found[split] = path
  if not found and required:
    raise FileNotFoundError(f"no train.csv/val.csv/test.csv in {data_dir}; name the CSVs with "
                            "--csv=train:path/a.csv,val:path/b.csv")
  return found


def _match_columns(fieldnames, wanted, csv_path):
  """{canonical name: header name in the file} for `wanted` {canonical: aliases}."""
  if not fieldnames:
    raise ValueError(f"{csv_path}: empty file (no header line); expected a header "
                     "Filename,PS1,PS2,FH1 and one row per image.")
  by_lower = collections.defaultdict(list)
  for name in fieldnames:
    if name is not None:
      by_lower[name.strip().lower()].append(name)
  columns = {}
  for canonical, aliases in wanted.items():
    for alias in aliases:
      if alias.lower() in by_lower:
        if len(by_lower[alias.lower()]) > 1:
          raise ValueError(f"{csv_path}: column {alias!r} appears "
                           f"{len(by_lower[alias.lower()])} times in the header; keep one.")
        columns[canonical] = by_lower[alias.lower()][0]
        break
    else:
      raise ValueError(
          f"{csv_path}: missing column {' or '.join(repr(a) for a in aliases)}; the header has "
          f"{list(fieldnames or [])}. Expected Filename,PS1,PS2,FH1 (or AOP Tangency for FH1).")
  return columns


def read_text(csv_path, encoding="auto"):
  """The text of a CSV file.

  Args:
    csv_path: the file.
    encoding: a Python codec name, or "auto": UTF-8/16/32 by byte-order mark, else UTF-8.

  Raises:
    ValueError naming the file, the line and the byte when it is not text in that encoding.
  """
  data = files.read_bounded(csv_path, files.MAX_TEXT_BYTES, "CSV")
  kind = images.sniff_format(data)
  if kind:
    raise ValueError(f"{csv_path}: this is a {kind.upper()} image, not a CSV; pass the label CSV "
                     "(Filename,PS1,PS2,FH1)")
  by_bom = False
  if encoding in (None, "", "auto"):
    encoding = next((codec for bom, codec in _BOMS if data.startswith(bom)), "utf-8")
    by_bom = encoding != "utf-8"
  try:
    codecs.lookup(encoding)
  except LookupError:
    raise ValueError(f"unknown CSV encoding {encoding!r}; use a Python codec name such as "
                     "utf-8, cp1252 or latin-1") from None
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    if by_bom:
      hint = f"its byte-order mark says {encoding} but the text is damaged; save it again as UTF-8"
    elif b"\x00" in data[:200]:
      hint = ("it looks like UTF-16 without a byte-order mark: save it as UTF-8, or pass "
              "--csv_encoding=utf-16-le")
    else:
      hint = ("save the CSV as UTF-8, or name its encoding (--csv_encoding=cp1252 for an Excel "
              "export in Western Europe)")
    raise ValueError(f"{csv_path} line {line}: not {encoding} text (byte "
                     f"{data[e.start:e.start + 1]!r} at offset {e.start}); {hint}") from None


def _parse_line(text):
  """The cells of one physical line, or csv.Error. A label CSV has no line breaks inside cells, so
  a quote left open ends with its line instead of swallowing the rows after it."""
  try:
    cells = next(csv.reader([text], strict=True), [])
  except csv.Error as e:
    return e
  if text.count('"') % 2:
    return csv.Error("a quote opened in this line is not closed")
  return cells


def _dict_rows(csv_path, encoding="auto"):
  """(header, [(line number, {header: cell} or csv.Error)]), one entry per physical line.

  Every non-blank line after the header is a row, as a person counts them: rows read = written +
  skipped holds against the file. Cells missing at the end of a short row are None.
  """
  lines = re.split(r"\r\n|\r|\n", read_text(csv_path, encoding))  # what an editor shows as lines
  if not any(line.strip() for line in lines):
    raise ValueError(f"{csv_path}: empty file (no header line); expected a header "
                     "Filename,PS1,PS2,FH1 and one row per image.")
  first = next(i for i, line in enumerate(lines) if line.strip())
  fieldnames = _parse_line(lines[first])
  if isinstance(fieldnames, csv.Error):
    raise ValueError(f"{csv_path} line {first + 1}: cannot read the header ({fieldnames})")
  if any("\x00" in name for name in fieldnames):
    raise ValueError(f"{csv_path} line 1: NUL characters in the header; this is not a text CSV "
                     "(UTF-16 without a byte-order mark? save it as UTF-8)")
  rows = []
  for number, text in enumerate(lines[first + 1:], start=first + 2):
    if not text.strip():
      continue
    cells = _parse_line(text)
    rows.append((number, cells if isinstance(cells, csv.Error) else
                 dict(itertools.zip_longest(fieldnames, cells[:len(fieldnames)]))))
  return fieldnames, rows


def no_rows(csv_path):
  """The message for a CSV that has a header and no rows."""
  return f"{csv_path}: only a header line, no rows; add one row per image (Filename,PS1,PS2,FH1)"


def _error_row(csv_path, line, error):
  return Row(csv_path, line, None, {}, f"{csv_path} line {line}: the CSV parser cannot read "
             f"this row ({error}); check its quotes and length")


def read_rows(csv_path, encoding="auto"):
  """Reads an IUGC CSV into `Row`s (cells unparsed; parsing errors belong to single rows).

  Raises ValueError (naming the file) when the header lacks a required column or the file is not
  text in `encoding` (see `read_text`).
  """
  fieldnames, dict_rows = _dict_rows(csv_path, encoding)
  wanted = {"Filename": (FILENAME_COLUMN,), **COLUMN_ALIASES}
  columns = _match_columns(fieldnames, wanted, csv_path)
  kept_column = next((name for name in fieldnames or () if name is not None and
                      name.strip().lower() == KEPT_COLUMN), None)
  rows = []
  for line, row in dict_rows:
    if isinstance(row, csv.Error):
      rows.append(_error_row(csv_path, line, row))
      continue
    texts = {name: row.get(columns[name]) for name in LANDMARK_NAMES}
    if kept_column is not None:
      texts[KEPT_COLUMN] = row.get(kept_column)
    rows.append(Row(csv_path, line, row.get(columns["Filename"]), texts))
  return rows


def read_filenames(csv_path, encoding="auto"):
  """The Filename column of a split CSV, as `Row`s with empty `texts` (for split membership)."""
  fieldnames, dict_rows = _dict_rows(csv_path, encoding)
  column = _match_columns(fieldnames, {"Filename": (FILENAME_COLUMN,)}, csv_path)["Filename"]
  return [_error_row(csv_path, line, row) if isinstance(row, csv.Error)
          else Row(csv_path, line, row.get(column), {}) for line, row in dict_rows]


def normalise_name(filename):
  """File name as a relative POSIX path without `.` or empty parts (the duplicate key)."""
  parts = (filename or "").strip().replace("\\", "/").split("/")
  return "/".join(p for p in parts if p not in ("", "."))


def resolve_in_folder(folder, filename, where, kind="image"):
  """Checks that `filename` stays inside `folder` and returns (path, normalised relative name).

  Refuses empty names, absolute paths, `..` components, symlinks whose target lies outside
  `folder` and missing files (`kind` names the file in that message). Raises InputError.
  """
  name = (filename or "").strip()
  if not name:
    raise InputError(f"{where}: empty Filename", "bad filename")
  if any(ord(c) < 32 for c in name):
    raise InputError(f"{where}: Filename {name!r} contains control characters (NUL, newline, "
                     "...); fix the Filename column", "bad filename")
  parts = name.replace("\\", "/").split("/")
  if (os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
      or ".." in parts):
    raise InputError(f"{where}: Filename {name!r} points outside the image folder {folder}; "
                     "use a path relative to it", "unsafe filename")
  relative = normalise_name(name)
  path = os.path.join(folder, *relative.split("/"))
  try:
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    inside = os.path.commonpath([root, real]) == root
    is_file = os.path.isfile(path)
  except (OSError, ValueError) as e:  # e.g. a name too long for the file system
    raise InputError(f"{where}: Filename {name!r} cannot be looked up ({e})",
                     "bad filename") from None
  if not inside:
    raise InputError(f"{where}: Filename {name!r} resolves to {real}, outside the image folder "
                     f"{root} (symlink?); copy the file into the folder", "unsafe filename")
  if not is_file and os.path.exists(path):
    raise InputError(f"{where}: {kind} {path} is not a regular file (a folder, FIFO or device); "
                     "skipped", "not a regular file")
  if not is_file:
    raise InputError(f"{where}: {kind} {path} not found; check the Filename column and "
                     f"the {kind} folder", f"missing {kind}")
  return path, relative


def _row_record(row, image_dir):
  """One `Row` -> `Record`; raises InputError."""
  where = f"{row.csv_path} line {row.line}"
  kept = (row.texts.get(KEPT_COLUMN) or "1").strip().lower()
  if kept in ("0", "false", "no"):
    raise InputError(f"{where}: the pseudo-label filters rejected this row ({KEPT_COLUMN}="
                     f"{kept}); correct it and set {KEPT_COLUMN}=1 to use it",
                     "pseudo-label rejected")
  parsed = []
  for name in LANDMARK_NAMES:
    try:
      parsed.append(points.parse_point(row.texts[name], f"{where}, column {name}"))
    except points.PointError as e:
      raise InputError(str(e), "bad point") from e
  landmarks = np.asarray(parsed, np.float32)
  # Refused here, before the row claims its file name, so that a later row can still fix it.
  if bool(geometry.is_degenerate(landmarks)):
    raise InputError(f"{where}: PS1 coincides with PS2 or FH1 {landmarks.tolist()}; the AoP is "
                     "undefined", "degenerate landmarks")
  name, index = frames.split_frame_name(row.filename.strip())
  path, relative = resolve_in_folder(image_dir, name, where)
  image = read_frame_gray(path, index, where)
  if index is not None:
    relative = frames.frame_name(relative, index)
  size = (image.shape[1], image.shape[0])
  for name, point in zip(LANDMARK_NAMES, parsed):
    try:
      points.check_in_image(point, size, f"{where}, column {name}, image {relative}")
    except points.PointError as e:
      raise InputError(str(e), "point outside image") from e
  return Record(filename=relative, image=image, landmarks=landmarks, where=where, path=path,
                frame=index)


def read_frame_gray(path, index, where):
  """uint8 gray [H, W] of a still image (`index` None) or of frame `index` of a clip or DICOM
  (`clip.mp4#12` in a Filename column; a DICOM without `#` is its frame 0). Raises InputError."""
  try:
    if index is None and frames.kind_of(path) == "image":
      return images.read_gray(path)
    with frames.open_source(path) as source:
      image = source.frame(index or 0).image
  except (images.ImageError, frames.FrameError) as e:
    raise InputError(f"{where}: {e}", "unreadable image") from e
  return image[..., 0] if image.shape[-1] == 1 else images.to_gray_uint8(image[..., ::-1], where)


def iter_records(rows, image_dir, seen, split, workers=1):
  """Yields one `Record` or `InputError` per row, in CSV order.

  Args:
    rows: `Row`s from `read_rows`.
    image_dir: folder the Filename column is relative to.
    seen: dict {normalised filename: "split (csv line n)"} of accepted files, shared by all
      splits of one build; a file already in it (same or earlier split) is refused as a
      duplicate.
    split: the split name, for the duplicate message.
    workers: threads reading and decoding images.
  """
  return unique_records(rows, seen, split, lambda row: _row_record(row, image_dir), workers)


def unique_records(rows, seen, split, make_record, workers=1):
  """Yields `make_record(row)` or an `InputError` per row, refusing files already in `seen`.

  The one duplicate rule of every source: rows the CSV parser rejected and rows naming a file an
  earlier accepted row (of any split) named are refused, and so are rows reaching the same file
  under another name (a symlink or a hard link: `claim`); `make_record` may raise `InputError`.
  Only accepted rows claim their file, so a later row may still fix a refused one. `make_record`
  runs on `workers` threads ahead of the rules, which are applied in row order.
  """
  def attempt(row):
    if row.error:
      return None
    try:
      return make_record(row)
    except InputError as e:
      return e

  rows = list(rows)
  for row, made in zip(rows, parallel.ordered_map(attempt, rows, workers)):
    if row.error:
      yield InputError(row.error, "malformed CSV row")
      continue
    key = normalise_name(row.filename)
    where = f"{row.csv_path} line {row.line}"
    if key and key in seen:
      yield InputError(f"{where}: duplicate Filename {row.filename!r}, already used by "
                       f"{seen[key]}; skipped", "duplicate filename")
      continue
    try:
      if isinstance(made, InputError):
        raise made
      claim(seen, made, key, f"{split} ({os.path.basename(row.csv_path)} line {row.line})", where)
    except InputError as e:
      yield e
      continue
    yield made


def claim(seen, record, key, owner, where):
  """Records that `owner` uses `record`'s name `key` and its file; raises InputError when another
  name of the same file (a link) was taken already, naming both."""
  same = files.identity(record.path) if record.path else None
  if same is not None and record.frame is not None:
    same = (*same, record.frame)  # frames of one clip are different examples
  if same is not None and same in seen:
    raise InputError(f"{where}: {record.path} is the same file as one already used by "
                     f"{seen[same]} (a link or another name of it); skipped",
                     "duplicate file")
  seen[key] = owner
  if same is not None:
    seen[same] = owner
