"""The viewer's corrections: an IUGC label CSV that `data_prep.build --source=csv` reads unchanged.

  Filename,PS1,PS2,FH1,source,frame,model_aop_deg,corrected
  images/clip_f00012.png,"(135.5, 22)","(95, 49)","(157, 112.25)",/data/clip.mp4,12,71.204,1

`Filename` is relative to the CSV's folder; points are `"(x, y)"` in that image's pixels (3
decimals); `source` is where the image came from (an input's absolute path, or
`upload:<sha256 prefix>/<name>` for a file dropped in the page), `frame` its 0-based frame (0 for
a still image), `model_aop_deg` the model's AoP for it, `corrected` 1 when the saved landmarks
differ from the model's. One row per (source, frame): saving again replaces that row.

A still image inside the CSV's folder is named as it lies; any other labelled image (a frame of a
clip or DICOM, a dropped file, a still elsewhere) is written as a PNG of its decoded pixels into
`<csv stem>_images/` beside the CSV, so that

  python -m data_prep.build --source=csv --csv=train:<csv> --image_dir=<the CSV's folder>

reads the saved work. Every save rewrites the CSV whole through a temporary file, fsync and
`os.replace`, so a crash at any moment leaves either the previous file or the new one, never a
mixture; a lock file keeps a second viewer from writing the same CSV.
"""

import csv
import dataclasses
import hashlib
import io
import math
import os
import re
import threading

import cv2
import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf.io import files
from aop_tf.io import points

try:
  import fcntl
except ImportError:  # Windows: no lock; one viewer per CSV is then the user's care.
  fcntl = None

COLUMNS = ("Filename", *LANDMARK_NAMES, "source", "frame", "model_aop_deg", "corrected")
CORRECTED_TOL_PX = 1e-3  # saved landmarks further than this from the model's count as corrected


class LabelError(ValueError):
  """A corrections CSV that cannot be read or written; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class Label:
  """One saved row.

  Attributes:
    filename: the image, relative to the CSV's folder (POSIX separators).
    landmarks: `((x, y), (x, y), (x, y))` pixels of that image, PS1, PS2, FH1.
    source: the input it came from (see the module docstring).
    frame: 0-based frame of the source (0 for a still image).
    model_aop_deg: the model's AoP for that frame, degrees (NaN if unknown).
    corrected: whether the landmarks differ from the model's.
  """
  filename: str
  landmarks: tuple
  source: str
  frame: int
  model_aop_deg: float
  corrected: bool

  def as_row(self):
    """The CSV cells of this label."""
    cells = {"Filename": self.filename, "source": self.source, "frame": str(self.frame),
             "model_aop_deg": (f"{self.model_aop_deg:.3f}" if math.isfinite(self.model_aop_deg)
                               else "nan"),
             "corrected": "1" if self.corrected else "0"}
    for name, point in zip(LANDMARK_NAMES, self.landmarks):
      cells[name] = points.format_point([round(float(v), 3) for v in point])
    return cells

  def as_json(self):
    """A JSON-ready dict (NaN as None)."""
    aop = self.model_aop_deg if math.isfinite(self.model_aop_deg) else None
    return {"filename": self.filename, "landmarks": [list(p) for p in self.landmarks],
            "source": self.source, "frame": self.frame, "model_aop_deg": aop,
            "corrected": self.corrected}


def safe_stem(name):
  """A file-name stem of letters, digits, `.`, `_`, `-` only (at most 80 characters)."""
  stem = os.path.splitext(os.path.basename(str(name)))[0]
  return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "image"


def normalise_name(filename):
  """A file name as a relative POSIX path without `.` or empty parts (as `data_prep` keys it)."""
  parts = (filename or "").strip().replace("\\", "/").split("/")
  return "/".join(p for p in parts if p not in ("", "."))


def _float(text, where):
  try:
    return float(text) if (text or "").strip() else math.nan
  except ValueError:
    raise LabelError(f"{where}: {text!r} is not a number") from None


def _parse_row(row, folder, where):
  """One CSV dict row -> `Label`; a plain IUGC row (no source/frame) names its own image."""
  filename = (row.get("Filename") or "").strip()
  if not filename:
    raise LabelError(f"{where}: empty Filename")
  try:
    landmarks = tuple(points.parse_point(row.get(n), f"{where}, column {n}")
                      for n in LANDMARK_NAMES)
  except points.PointError as e:
    raise LabelError(str(e)) from None
  source = (row.get("source") or "").strip() or os.path.join(folder, filename)
  frame = _float(row.get("frame") or "0", f"{where}, column frame")
  if not (math.isfinite(frame) and frame >= 0 and frame == int(frame)):
    raise LabelError(f"{where}, column frame: {row.get('frame')!r} is not a frame number")
  corrected = (row.get("corrected") or "0").strip().lower() in ("1", "true", "yes")
  return Label(normalise_name(filename), landmarks, source, int(frame),
               _float(row.get("model_aop_deg"), f"{where}, column model_aop_deg"), corrected)


def read_labels(csv_path):
  """The labels of a corrections CSV (or any IUGC CSV) in file order, the last row of a
  (source, frame) winning. Raises LabelError naming the file and line of a bad row."""
  try:
    text = files.read_bounded(csv_path, files.MAX_TEXT_BYTES, "corrections CSV").decode(
        "utf-8-sig")
  except (OSError, ValueError) as e:
    raise LabelError(f"{csv_path}: cannot read the corrections ({e})") from None
  reader = csv.DictReader(io.StringIO(text))
  if reader.fieldnames and "FH1" not in reader.fieldnames and "AOP Tangency" in reader.fieldnames:
    reader.fieldnames = ["FH1" if n == "AOP Tangency" else n for n in reader.fieldnames]
  missing = [c for c in ("Filename", *LANDMARK_NAMES) if c not in (reader.fieldnames or [])]
  if missing:
    raise LabelError(f"{csv_path}: missing columns {missing}; expected "
                     f"{','.join(COLUMNS)}. Pass another --labels file or fix the header.")
  folder = os.path.dirname(os.path.abspath(csv_path))
  found = {}
  for row in reader:
    label = _parse_row(row, folder, f"{csv_path} line {reader.line_num}")
    found[(label.source, label.frame)] = label
  return list(found.values())


def atomic_write(path, data):
  """Writes bytes to `path` atomically (`files.atomic_write`); the temporary file is named
  `.<name>.tmp-*`, so a restart finds and removes what a killed save left."""
  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)

  files.atomic_write(path, write, prefix=f".{os.path.basename(path)}.tmp-")


def _inside(path, folder):
  real, root = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([real, root]) == root


class LabelStore:
  """The corrections CSV of one viewer: read at start (resume), rewritten atomically per save.

  Args:
    csv_path: the CSV (created on the first save; its folder too).
  """

  def __init__(self, csv_path):
    self.path = os.path.abspath(csv_path)
    self.folder = os.path.dirname(self.path)
    self.image_dir = os.path.join(self.folder, safe_stem(self.path) + "_images")
    self._lock = threading.Lock()
    self._lock_file = None
    os.makedirs(self.folder, exist_ok=True)
    self._hold_lock()
    self._remove_stale_temp_files()
    labels = read_labels(self.path) if os.path.exists(self.path) else []
    self._labels = {(label.source, label.frame): label for label in labels}

  def _hold_lock(self):
    if fcntl is None:
      return
    self._lock_file = open(self.path + ".lock", "a")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._lock_file.close()
      raise LabelError(f"{self.path} is being written by another viewer; close it or pass "
                       "another --labels file") from None

  def _remove_stale_temp_files(self):
    prefix = f".{os.path.basename(self.path)}.tmp-"
    for folder in (self.folder, self.image_dir):
      if os.path.isdir(folder):
        for name in os.listdir(folder):
          if name.startswith(prefix) or (folder == self.image_dir and ".tmp-" in name):
            os.remove(os.path.join(folder, name))

  def close(self):
    """Releases the lock file."""
    if self._lock_file is not None:
      self._lock_file.close()
      self._lock_file = None

  def __len__(self):
    return len(self._labels)

  def get(self, source, frame):
    """The saved `Label` of (source, frame), or None."""
    return self._labels.get((source, int(frame)))

  def all(self):
    """Every saved `Label`, in save order."""
    return list(self._labels.values())

  def save(self, source, frame, landmarks, model_landmarks, model_aop_deg, image_fn,
           still_path=None):
    """Saves (or replaces) the label of one frame; returns the `Label`.

    Args:
      source, frame: which image (see `Label`).
      landmarks: [3, 2] `(x, y)` pixels, PS1, PS2, FH1.
      model_landmarks: the model's [3, 2] for that frame (decides `corrected`), or None.
      model_aop_deg: the model's AoP, degrees.
      image_fn: `() -> uint8 [H, W, C]`, the frame's pixels (called only to write its PNG).
      still_path: the still image file it is, if any (kept in place when inside the folder).
    """
    landmarks = np.asarray(landmarks, np.float64).reshape(3, 2)
    if not np.all(np.isfinite(landmarks)):
      raise LabelError(f"landmarks {landmarks.tolist()} are not finite numbers")
    corrected = model_landmarks is None or bool(
        np.max(np.abs(landmarks - np.asarray(model_landmarks, np.float64))) > CORRECTED_TOL_PX)
    with self._lock:
      old = self._labels.get((source, int(frame)))
      filename = old.filename if old is not None else None
      if filename is None or not os.path.isfile(os.path.join(self.folder, filename)):
        filename = self._image_for(source, int(frame), image_fn, still_path)
      label = Label(filename, tuple(tuple(float(v) for v in p) for p in landmarks), str(source),
                    int(frame), float(model_aop_deg), corrected)
      labels = dict(self._labels)
      labels[(label.source, label.frame)] = label
      self._write(labels.values())
      self._labels = labels
    return label

  def _image_for(self, source, frame, image_fn, still_path):
    """The Filename of a new label: a still inside the folder as it lies, a still elsewhere
    copied byte for byte (its stored pixels, which the points refer to), a frame of a clip or
    DICOM written as PNG."""
    if still_path and os.path.isfile(still_path) and _inside(still_path, self.folder):
      return os.path.relpath(os.path.realpath(still_path),
                             os.path.realpath(self.folder)).replace(os.sep, "/")
    stem = safe_stem(source.rsplit("/", 1)[-1])
    suffix = ".png"
    if still_path:
      suffix = os.path.splitext(still_path)[1].lower()
      suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".png"
    else:
      stem += f"_f{frame:05d}"
    name = self._free_name(stem, suffix)
    if still_path:
      with open(still_path, "rb") as f:
        data = f.read()
    else:
      data = _png_bytes(image_fn(), f"frame {frame} of {source}")
    os.makedirs(self.image_dir, exist_ok=True)
    atomic_write(os.path.join(self.folder, name), data)
    return name

  def _free_name(self, stem, suffix):
    """`<image dir>/<stem><suffix>`, numbered `_2`, `_3`, ... if taken (relative, POSIX)."""
    taken = {label.filename for label in self._labels.values()}
    folder = os.path.relpath(self.image_dir, self.folder).replace(os.sep, "/")
    name, n = f"{folder}/{stem}{suffix}", 1
    while name in taken or os.path.exists(os.path.join(self.folder, name)):
      n += 1
      name = f"{folder}/{stem}_{n}{suffix}"
    return name

  def _write(self, labels):
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for label in labels:
      writer.writerow(label.as_row())
    try:
      atomic_write(self.path, text.getvalue().encode("utf-8"))
    except OSError as e:
      raise LabelError(f"{self.path}: saving failed ({e.strerror or e}); the previous version "
                       "is intact") from None


def _png_bytes(image, what):
  """uint8 [H, W, C] (C = 1 or RGB) -> PNG bytes."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  ok, png = cv2.imencode(".png", image)
  if not ok:
    raise LabelError(f"cannot encode {what} as PNG")
  return png.tobytes()


def content_source(name, data):
  """The `source` of a file dropped in the page: `upload:<sha256 prefix>/<its name>`."""
  digest = hashlib.sha256(data).hexdigest()[:12]
  return f"upload:{digest}/{os.path.basename(str(name)) or 'image'}"
