"""Frames of any input: a still image, a DICOM (one frame or a cine loop), a video clip, or a
folder of numbered frames taken as a clip. One contract for every format:

  with frames.open_source(path) as source:
    source.info            # SourceInfo: kind, frame count, fps, frame size, pixel spacing
    for frame in source.frames(frames.parse_selection("every:2")):
      frame.image          # uint8 [H, W, C], C = 1 (gray) or 3 (RGB)

Frames are decoded one at a time as they are asked for, never a whole clip at once, so memory is
bounded by one frame whatever the length of the clip. A frame that cannot be read raises
`FrameError` naming the file and the frame; frames already yielded stand.

Coordinates: a frame's pixels are the stored ones (origin top-left, `(x, y)` = (column, row));
`size_px` is `(width, height)`. `pixel_spacing_mm` is `(column spacing, row spacing)`, mm per pixel,
where the file states it (DICOM PixelSpacing or the ultrasound region calibration), else None.

Privacy: readers keep only what is listed in `SourceInfo`/`Frame`; no patient attribute of a DICOM
header (name, ID, birth date, accession number, ...) is ever kept, logged or put in a message.
"""

import dataclasses
import math
import os
import re
import threading
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from aop_tf.io import files
from aop_tf.io import images as image_files

STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
KINDS = ("image", "dicom", "video", "frames")


class FrameError(ValueError):
  """A source or one of its frames that cannot be read; the message names the file (and frame)."""


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What is known about a source before its frames are decoded.

  Attributes:
    path: the file or folder as given.
    kind: one of `KINDS`.
    n_frames: frames in the source (a video's container count; -1 when unknown).
    fps: frames per second; NaN for a still image or when unknown.
    size_px: `(width, height)` of its frames.
    pixel_spacing_mm: `(column, row)` mm per pixel, or None.
  """
  path: str
  kind: str
  n_frames: int
  fps: float
  size_px: Tuple[int, int]
  pixel_spacing_mm: Optional[Tuple[float, float]] = None

  @property
  def is_clip(self):
    """More than one frame in time: a video, a multi-frame DICOM or a folder of frames."""
    return self.kind in ("video", "frames") or self.n_frames > 1


@dataclasses.dataclass(frozen=True)
class Frame:
  """One decoded frame.

  Attributes:
    image: uint8 [H, W, C], C = 1 or 3, the stored pixels.
    source: the path of its source.
    index: 0-based frame number in its source (0 for a still image).
    time_s: seconds from the start of the clip (`index / fps`, or the file's own frame times);
      NaN for a still image or when the rate is unknown.
    size_px: `(width, height)` of the frame.
    pixel_spacing_mm: `(column, row)` mm per pixel, or None.
    in_clip: whether the source is a clip (`SourceInfo.is_clip`).
  """
  image: np.ndarray
  source: str
  index: int
  time_s: float
  size_px: Tuple[int, int]
  pixel_spacing_mm: Optional[Tuple[float, float]] = None
  in_clip: bool = False

  @property
  def name(self):
    """`path` for a still image, `path#index` for a frame of a clip (as IUGC CSVs name them)."""
    return frame_name(self.source, self.index, self.in_clip)


def frame_name(source, index, is_clip=True):
  """`clip.mp4#12`: how outputs and label CSVs name frame 12 of a clip; a still image's own path."""
  return f"{source}#{int(index)}" if is_clip else str(source)


def split_frame_name(name):
  """`(path, frame index or None)` of `clip.mp4#12` / `scan.png`; the inverse of `frame_name`."""
  match = re.fullmatch(r"(.+)#(\d+)", str(name))
  if match:
    return match.group(1), int(match.group(2))
  return str(name), None


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which frames of a clip to read: every `step`-th frame from `first` to `last` (inclusive;
  None: to the end). `parse_selection` makes one from `--frames`."""
  first: int = 0
  last: Optional[int] = None
  step: int = 1

  def indices(self, n_frames):
    """The selected indices of a source of `n_frames` frames (-1: unknown, open-ended)."""
    last = self.last if self.last is not None else (n_frames - 1 if n_frames >= 0 else None)
    if n_frames >= 0 and last is not None:
      last = min(last, n_frames - 1)
    index = self.first
    while last is None or index <= last:
      yield index
      index += self.step

  def count(self, n_frames):
    """How many frames of a source of `n_frames` frames `indices` yields (-1: unknown)."""
    if n_frames < 0:
      return -1
    last = n_frames - 1 if self.last is None else min(self.last, n_frames - 1)
    return max(0, (last - self.first) // self.step + 1) if last >= self.first else 0

  def wants(self, index):
    """Whether frame `index` is selected."""
    return (index >= self.first and (self.last is None or index <= self.last)
            and (index - self.first) % self.step == 0)


ALL_FRAMES = Selection()


def parse_selection(text):
  """`--frames`: `all`, `every:N` (every N-th frame from the first) or `FIRST:LAST` (0-based,
  inclusive; either side may be empty), optionally `FIRST:LAST:N`.

  Raises:
    ValueError naming the flag and the accepted forms.
  """
  text = (text or "all").strip().lower()
  usage = (f"--frames={text!r}: expected all, every:N (N >= 1), FIRST:LAST or FIRST:LAST:N "
           "(0-based frame numbers, LAST included)")
  if text == "all":
    return ALL_FRAMES
  match = re.fullmatch(r"every:(\d+)", text)
  if match:
    if int(match.group(1)) < 1:
      raise ValueError(usage)
    return Selection(step=int(match.group(1)))
  match = re.fullmatch(r"(\d*):(\d*)(?::(\d+))?", text)
  if not match:
    raise ValueError(usage)
  first = int(match.group(1)) if match.group(1) else 0
  last = int(match.group(2)) if match.group(2) else None
  step = int(match.group(3)) if match.group(3) else 1
  if step < 1 or (last is not None and last < first):
    raise ValueError(usage)
  return Selection(first, last, step)


class Source:
  """Base of the readers: `info`, `frames(selection)`, `frame(index)`, and a context manager.

  Subclasses implement `_read(index) -> uint8 [H, W, C]` (random access) and may override
  `frames` to decode sequentially (a video).
  """
  info: SourceInfo

  def frame(self, index):
    """Frame `index` (FrameError naming the file and frame if it cannot be read)."""
    n = self.info.n_frames
    if index < 0 or (n >= 0 and index >= n):
      raise FrameError(f"{self.info.path}: frame {index} does not exist (the source has {n} "
                       "frames)")
    return self._frame(index, self._read(index))

  def frames(self, selection=ALL_FRAMES):
    """Yields the selected `Frame`s in order, each decoded when asked for."""
    for index in selection.indices(self.info.n_frames):
      yield self.frame(index)

  def _frame(self, index, image):
    fps = self.info.fps
    time_s = index / fps if fps and math.isfinite(fps) and fps > 0 else math.nan
    height, width = image.shape[:2]
    return Frame(image, self.info.path, index, time_s, (width, height),
                 self.info.pixel_spacing_mm, self.info.is_clip)

  def _read(self, index):
    raise NotImplementedError

  def close(self):
    """Releases the file (a video decoder); reading after close is an error."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


# Images with more pixels are shrunk to about this many as they are read (`read_still`): the model
# sees a 256x256 version anyway, and landmarks are mapped back to the original pixels.
REDUCE_PIXELS = 4_000_000
# Images over REDUCE_PIXELS decoded at once, whatever the reader threads: each holds up to ~250 MB
# while it decodes, so this bounds a reader's peak memory (README: 1.5 GB).
_LARGE_DECODES = threading.BoundedSemaphore(2)


def decode_still(data, where, max_pixels=image_files.MAX_PIXELS, reduce_pixels=REDUCE_PIXELS):
  """Encoded PNG/JPEG/BMP/GIF/TIFF bytes -> `(uint8 [h, w, C], (width, height))`, C = 1 or 3.

  Gray stays one channel; colour becomes RGB; alpha is dropped; 16 bits become 8 (x 255/65535,
  rounded). An image over `reduce_pixels` is decoded straight to gray and shrunk to about that
  many pixels (area averaging); `(width, height)` is always the stored size. A file the strict
  decoder refuses (truncated, corrupt) is refused here too (`images.decode_gray`'s rule).

  Raises:
    FrameError naming `where`.
  """
  if not data:
    raise FrameError(f"{where}: empty file")
  try:
    image_files.check_size(data, where, max_pixels)
    declared = image_files.encoded_size(data)
    if declared is not None and reduce_pixels and declared[0] * declared[1] > reduce_pixels:
      with _LARGE_DECODES:
        gray = image_files.decode_gray(data, where)
      height, width = gray.shape
      scale = math.sqrt(reduce_pixels / (width * height))
      shape = (max(1, int(width * scale)), max(1, int(height * scale)))
      return cv2.resize(gray, shape, interpolation=cv2.INTER_AREA)[..., None], (width, height)
    image = image_files._imdecode(data)  # pylint: disable=protected-access
    kind = image_files.sniff_format(data)
    if image is None:
      detail = f"looks like {kind} but is corrupt or truncated" if kind else (
          f"not an image, DICOM or video file (first bytes {data[:8]!r})")
      raise FrameError(f"{where}: cannot decode: {detail}; re-export it as PNG")
    image_files._check_strict(data, kind, where)  # pylint: disable=protected-access
  except image_files.ImageError as e:
    raise FrameError(str(e)) from None
  image = to_uint8_frame(image, where)
  return image, (image.shape[1], image.shape[0])


def read_still(path, max_pixels=image_files.MAX_PIXELS, reduce_pixels=REDUCE_PIXELS):
  """Reads one still image file: `decode_still` of its bytes (FrameError naming the file)."""
  try:
    data = image_files.read_bytes(str(path))
  except image_files.ImageError as e:
    raise FrameError(str(e)) from None
  return decode_still(data, str(path), max_pixels, reduce_pixels)


def to_uint8_frame(image, where="image"):
  """A decoded cv2 array (gray, gray + alpha, BGR, BGRA; uint8 or uint16) -> uint8 [H, W, 1|3],
  colour as RGB."""
  if image.dtype == np.uint16:
    image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  elif image.dtype != np.uint8:
    raise FrameError(f"{where}: unsupported pixel type {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  channels = image.shape[2]
  if channels == 2:
    image = image[..., :1]
  elif channels == 3:
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  elif channels == 4:
    image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  elif channels != 1:
    raise FrameError(f"{where}: unsupported number of channels {channels}")
  if image.ndim == 2:
    image = image[..., None]
  if min(image.shape[:2]) < 1:
    raise FrameError(f"{where}: empty image {image.shape}")
  return np.ascontiguousarray(image)


class StillSource(Source):
  """One still image file (PNG, JPEG, BMP, GIF, TIFF; by content, whatever the suffix)."""

  def __init__(self, path, max_pixels=image_files.MAX_PIXELS, reduce_pixels=REDUCE_PIXELS):
    self._path = str(path)
    self._image, size = read_still(self._path, max_pixels, reduce_pixels)
    self.info = SourceInfo(self._path, "image", 1, math.nan, size)

  def frame(self, index):
    if index != 0:
      raise FrameError(f"{self._path}: a still image has frame 0 only, not {index}")
    # The image may be reduced (`read_still`); size_px stays the stored size.
    return Frame(self._image, self._path, 0, math.nan, self.info.size_px, None, False)

  def _read(self, index):
    return self._image


def is_dicom(path):
  """Whether the file starts like a DICOM Part 10 file ("DICM" after the 128-byte preamble) or
  carries a DICOM suffix."""
  if str(path).lower().endswith(DICOM_SUFFIXES):
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def kind_of(path):
  """`"frames"` (a folder), `"dicom"`, `"video"` or `"image"`: how `open_source` reads `path`."""
  if os.path.isdir(path):
    return "frames"
  if is_dicom(path):
    return "dicom"
  if str(path).lower().endswith(VIDEO_SUFFIXES):
    return "video"
  return "image"


def open_source(path, max_pixels=image_files.MAX_PIXELS):
  """Opens any input as a `Source`: a folder of numbered frames (a clip), a DICOM, a video or a
  still image. Raises FrameError naming the file and the reason when it cannot be opened."""
  path = str(path)
  kind = kind_of(path)
  if kind != "frames":
    try:
      files.check_regular(path, "input")
    except files.FileError as e:
      raise FrameError(str(e)) from None
  if kind == "frames":
    from aop_tf.io import frame_folder  # pylint: disable=import-outside-toplevel
    return frame_folder.FrameFolderSource(path, max_pixels=max_pixels)
  if kind == "dicom":
    from aop_tf.io import dicom  # pylint: disable=import-outside-toplevel
    return dicom.DicomSource(path, max_pixels=max_pixels)
  if kind == "video":
    from aop_tf.io import video  # pylint: disable=import-outside-toplevel
    return video.VideoSource(path)
  return StillSource(path, max_pixels)


def iter_frames(path, selection=ALL_FRAMES, max_pixels=image_files.MAX_PIXELS
                ) -> Iterator[Frame]:
  """The selected frames of any input (`open_source`), the source closed at the end."""
  with open_source(path, max_pixels) as source:
    yield from source.frames(selection)
