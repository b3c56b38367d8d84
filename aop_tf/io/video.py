"""Video clips (MP4, AVI, MOV, MKV, ...) through OpenCV's `cv2.VideoCapture`, a frame at a time.

`VideoSource` follows the `frames.Source` contract: `frames(selection)` decodes forward (`grab()`
for skipped frames, `retrieve()` for kept ones), so memory holds one frame whatever the length of
the clip; `frame(index)` seeks, checks where the decoder landed, and decodes forward from the start
instead when seeking proves unreliable. Which codecs open depends on the OpenCV build (the pip
wheels bundle FFmpeg's decoders).

A frame whose three channels agree (within `GRAY_TOLERANCE`: lossy codecs store gray in YUV and
come back a few levels apart) is gray, uint8 [H, W, 1] (its luma); any other is RGB [H, W, 3].
The decision is per frame, so a frame reads the same by seeking or in sequence.

`time_s` is the decoder's timestamp of the frame (`CAP_PROP_POS_MSEC`), or `index / fps` where the
backend gives none. A clip that ends before its container's frame count (a cut-off download) yields
its frames up to the cut, then raises `FrameError` naming the file and the first missing frame.
"""

import dataclasses
import math
import os

import cv2

from aop_tf.io import files
from aop_tf.io import frames

# FFmpeg's own log lines ("[mjpeg @ 0x...] overread 8") would only repeat our one-line errors:
# FATAL only (8), unless the user chose a level. Read when OpenCV first opens a file with FFmpeg.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

# Largest difference, in levels, between the channels of a pixel of a gray frame. Gray written to
# MJPG or mp4v comes back with channels up to ~4 apart (YUV rounding, chroma quantisation); colour
# overlays and Doppler differ by tens.
GRAY_TOLERANCE = 8
# A frame at most this far ahead is reached by decoding forward, not by seeking (a seek lands on
# a key frame and decodes forward anyway).
SEEK_GAP = 32


def has_ffmpeg():
  """Whether this OpenCV build has its FFmpeg video backend."""
  try:
    return bool(cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG))
  except AttributeError:  # very old OpenCV
    return "FFMPEG:                      YES" in cv2.getBuildInformation()


_CONTAINERS = (  # (offset, magic, name)
    (4, b"ftyp", "an MP4/MOV"), (0, b"RIFF", "an AVI"), (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM"),
    (0, b"\x00\x00\x01\xba", "an MPEG-PS"), (0, b"\x30\x26\xb2\x75", "a WMV"))


def _open_failure(path):
  """The one-line FrameError for a file the video decoders refuse."""
  try:
    with open(path, "rb") as f:
      head = f.read(16)
  except OSError:
    head = b""
  kind = next((name for offset, magic, name in _CONTAINERS
               if head[offset:offset + len(magic)] == magic), None)
  detail = (f"it looks like {kind} file but is cut off, corrupt or uses a codec the build lacks"
            if kind else f"not a video file? (first bytes {head[:8]!r})")
  return frames.FrameError(
      f"{path}: cannot decode it with this OpenCV build's decoders (FFmpeg backend: "
      f"{'yes' if has_ffmpeg() else 'no'}; {detail}); re-encode it as MJPG .avi or H.264 .mp4")


def _capture(path):
  """An opened `cv2.VideoCapture` of `path` (FFmpeg when built in), or None."""
  backend = cv2.CAP_FFMPEG if has_ffmpeg() else cv2.CAP_ANY
  cap = cv2.VideoCapture(path, backend)
  if cap.isOpened():
    return cap
  cap.release()
  return None


def to_frame_image(image, where="video"):
  """A decoded BGR frame -> uint8 [H, W, 1] (gray: its channels within `GRAY_TOLERANCE`) or
  [H, W, 3] RGB; other layouts as `frames.to_uint8_frame`."""
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != "uint8":
    return frames.to_uint8_frame(image, where)
  blue, green, red = cv2.split(image)
  spread = max(cv2.norm(blue, green, cv2.NORM_INF), cv2.norm(blue, red, cv2.NORM_INF))
  if spread <= GRAY_TOLERANCE:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[..., None]  # exact where channels are equal
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class _Ended(Exception):
  """The decoder ran out of frames; `last` is the index of the last frame it decoded."""

  def __init__(self, last):
    super().__init__(last)
    self.last = last


class VideoSource(frames.Source):
  """A video file as a `frames.Source` (kind "video").

  `info.n_frames` is the container's frame count (-1 when it states none: the clip is then read
  to its end); `info.fps` is NaN when unknown; `info.size_px` is the first frame's.

  Raises:
    FrameError naming the file: missing, empty, not decodable, or without a single frame.
  """

  def __init__(self, path):
    self._path = str(path)
    try:
      files.check_regular(self._path, "video")
    except files.FileError as e:
      raise frames.FrameError(str(e)) from None
    if os.path.getsize(self._path) == 0:
      raise frames.FrameError(f"{self._path}: empty file (0 bytes); not a video")
    self._cap = _capture(self._path)
    if self._cap is None:
      raise _open_failure(self._path)
    self._pos = -1  # index of the frame last grabbed (ready for retrieve), -1 before the first
    self._seek_ok = True
    count = int(round(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    fps = self._cap.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and fps > 0 else math.nan
    try:
      first = self._read(0)
    except frames.FrameError:
      self.close()
      raise frames.FrameError(f"{self._path}: the video has no decodable frame (its container "
                              f"states {max(count, 0)} frames)") from None
    height, width = first.shape[:2]
    self.info = frames.SourceInfo(self._path, "video", count if count > 0 else -1, fps,
                                  (width, height))

  def frames(self, selection=frames.ALL_FRAMES):
    """Yields the selected frames in order, decoding forward; FrameError at a cut in the file."""
    for k, index in enumerate(selection.indices(self.info.n_frames)):
      try:
        self._goto(index, may_seek=k == 0)
      except _Ended as e:
        if self.info.n_frames < 0:
          return  # no stated count: the end of the file is the end of the clip
        raise self._cut(index, e.last) from None
      yield self._frame(index, self._retrieve(index))

  def _read(self, index):
    try:
      self._goto(index, may_seek=True)
    except _Ended as e:
      raise self._cut(index, e.last) from None
    return self._retrieve(index)

  def _retrieve(self, index):
    ok, image = self._cap.retrieve()
    if not ok or image is None:
      raise frames.FrameError(f"{self._path}: frame {index} could not be decoded (corrupt data)")
    return to_frame_image(image, f"{self._path}: frame {index}")

  def _cut(self, index, last):
    wanted = "" if index == last + 1 else f" (frame {index} asked for)"
    return frames.FrameError(f"{self._path}: frame {last + 1} could not be decoded (the file ends "
                             f"or is corrupt after frame {last}){wanted}")

  def _frame(self, index, image):
    frame = super()._frame(index, image)
    msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
    if math.isfinite(msec) and msec >= 0 and (index == 0 or msec > 0):
      frame = dataclasses.replace(frame, time_s=msec / 1000.0)
    return frame

  def _goto(self, index, may_seek):
    """Leaves frame `index` grabbed; raises _Ended when the file ends before it."""
    if self._cap is None:
      raise frames.FrameError(f"{self._path}: the video is closed")
    if index < self._pos or (may_seek and index > self._pos + SEEK_GAP):
      if self._seek_ok:
        self._seek(index)  # on failure the capture is back before frame 0
      elif index < self._pos:
        self._reopen()
    while self._pos < index:
      if not self._cap.grab():
        raise _Ended(self._pos)
      self._pos += 1

  def _seek(self, index):
    """Seeks to frame `index` and grabs it. Where the decoder does not land where asked, the
    capture is reopened and this source decodes forward from then on; past the end, reopened."""
    cap = self._cap
    if cap.set(cv2.CAP_PROP_POS_FRAMES, index) and round(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index:
      if not cap.grab():  # past the end: decoding forward finds where the file stops
        self._reopen()
        return
      if round(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index + 1:
        self._pos = index
        return
    self._seek_ok = False
    self._reopen()

  def _reopen(self):
    self._cap.release()
    self._cap = _capture(self._path)
    self._pos = -1
    if self._cap is None:
      raise frames.FrameError(f"{self._path}: the video could not be opened again")

  def close(self):
    """Releases the decoder."""
    if getattr(self, "_cap", None) is not None:
      self._cap.release()
      self._cap = None
