"""IUGC-format source: a folder of images plus one CSV per split.

CSV columns `Filename,PS1,PS2,FH1` (FH1 may be called `AOP Tangency`; other columns are ignored;
header names match case-insensitively), points as `"(x, y)"` strings in original-image pixels.
Files are read as UTF-8 with or without BOM. Images may be PNG or JPEG whatever their suffix says,
gray, RGB, RGBA or 16-bit; they are stored as 8-bit gray at their original size.

Every refused row becomes an `InputError` naming the CSV, line, column and value: malformed or
out-of-image points, missing or unreadable images, file names that escape the image folder
(`../`, absolute paths, symlinks resolving outside) and duplicates (the first accepted row wins).
"""

import collections
import csv
import os

import numpy as np

from aop_tf import LANDMARK_NAMES
from data_prep import SPLITS, InputError, Record, images, points

FILENAME_COLUMN = "Filename"
# Accepted header names per landmark (first match wins), compared case-insensitively.
COLUMN_ALIASES = {"PS1": ("PS1",), "PS2": ("PS2",), "FH1": ("FH1", "AOP Tangency")}

Row = collections.namedtuple("Row", "csv_path line filename texts")
Row.__doc__ = """One CSV row: `line` 1-based in the file, `texts` {landmark name: cell text}."""


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
  by_lower = {}
  for name in fieldnames or ():
    if name is not None:
      by_lower.setdefault(name.strip().lower(), name)
  columns = {}
  for canonical, aliases in wanted.items():
    for alias in aliases:
      if alias.lower() in by_lower:
        columns[canonical] = by_lower[alias.lower()]
        break
    else:
      raise ValueError(
          f"{csv_path}: missing column {' or '.join(repr(a) for a in aliases)}; the header has "
          f"{list(fieldnames or [])}. Expected Filename,PS1,PS2,FH1 (or AOP Tangency for FH1).")
  return columns


def _dict_rows(csv_path):
  """Yields (line number, row dict) of a CSV, header checked by the caller via `reader`."""
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    fieldnames = reader.fieldnames
    rows = []
    line = 1
    for row in reader:
      rows.append((line + 1, row))  # line of the row's first physical line
      line = reader.line_num
  return fieldnames, rows


def read_rows(csv_path):
  """Reads an IUGC CSV into `Row`s (cells unparsed; parsing errors belong to single rows).

  Raises ValueError (naming the file) when the header lacks a required column or the file is not
  UTF-8 text.
  """
  try:
    fieldnames, dict_rows = _dict_rows(csv_path)
  except UnicodeDecodeError as e:
    raise ValueError(f"{csv_path}: not UTF-8 text ({e}); save it as UTF-8 CSV") from e
  wanted = {"Filename": (FILENAME_COLUMN,), **COLUMN_ALIASES}
  columns = _match_columns(fieldnames, wanted, csv_path)
  rows = []
  for line, row in dict_rows:
    texts = {name: row.get(columns[name]) for name in LANDMARK_NAMES}
    rows.append(Row(csv_path, line, row.get(columns["Filename"]), texts))
  return rows


def read_filenames(csv_path):
  """The Filename column of a split CSV, as `Row`s with empty `texts` (for split membership)."""
  try:
    fieldnames, dict_rows = _dict_rows(csv_path)
  except UnicodeDecodeError as e:
    raise ValueError(f"{csv_path}: not UTF-8 text ({e}); save it as UTF-8 CSV") from e
  column = _match_columns(fieldnames, {"Filename": (FILENAME_COLUMN,)}, csv_path)["Filename"]
  return [Row(csv_path, line, row.get(column), {}) for line, row in dict_rows]


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
  parts = name.replace("\\", "/").split("/")
  if (os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
      or ".." in parts):
    raise InputError(f"{where}: Filename {name!r} points outside the image folder {folder}; "
                     "use a path relative to it", "unsafe filename")
  relative = normalise_name(name)
  path = os.path.join(folder, *relative.split("/"))
  root = os.path.realpath(folder)
  real = os.path.realpath(path)
  if os.path.commonpath([root, real]) != root:
    raise InputError(f"{where}: Filename {name!r} resolves to {real}, outside the image folder "
                     f"{root} (symlink?); copy the file into the folder", "unsafe filename")
  if not os.path.isfile(path):
    raise InputError(f"{where}: {kind} {path} not found; check the Filename column and "
                     f"the {kind} folder", f"missing {kind}")
  return path, relative


def _row_record(row, image_dir):
  """One `Row` -> `Record`; raises InputError."""
  where = f"{row.csv_path} line {row.line}"
  parsed = []
  for name in LANDMARK_NAMES:
    try:
      parsed.append(points.parse_point(row.texts[name], f"{where}, column {name}"))
    except points.PointError as e:
      raise InputError(str(e), "bad point") from e
  path, relative = resolve_in_folder(image_dir, row.filename, where)
  try:
    image = images.read_gray(path)
  except images.ImageError as e:
    raise InputError(f"{where}: {e}", "unreadable image") from e
  size = (image.shape[1], image.shape[0])
  for name, point in zip(LANDMARK_NAMES, parsed):
    try:
      points.check_in_image(point, size, f"{where}, column {name}, image {relative}")
    except points.PointError as e:
      raise InputError(str(e), "point outside image") from e
  # Coincident points (undefined AoP) are refused by data_prep.build for every source at once.
  return Record(filename=relative, image=image, landmarks=np.asarray(parsed, np.float32),
                where=where)


def iter_records(rows, image_dir, seen, split):
  """Yields one `Record` or `InputError` per row, in CSV order.

  Args:
    rows: `Row`s from `read_rows`.
    image_dir: folder the Filename column is relative to.
    seen: dict {normalised filename: "split (csv line n)"} of accepted files, shared by all
      splits of one build; a file already in it (same or earlier split) is refused as a
      duplicate.
    split: the split name, for the duplicate message.
  """
  for row in rows:
    key = normalise_name(row.filename)
    if key and key in seen:
      yield InputError(f"{row.csv_path} line {row.line}: duplicate Filename {row.filename!r}, "
                       f"already used by {seen[key]}; skipped", "duplicate filename")
      continue
    try:
      record = _row_record(row, image_dir)
    except InputError as e:
      yield e
      continue
    # Only accepted rows claim a file name: a later row may still fix a refused one.
    seen[key] = f"{split} ({os.path.basename(row.csv_path)} line {row.line})"
    yield record
