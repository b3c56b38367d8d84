"""Test clips on disk: videos written with OpenCV, real PSFHS frames, a phantom whose AoP moves.

Helpers for tests and benchmarks (no tests here):

  write_video(path, frames, fps=30, codec="MJPG")   # .avi (MJPG, XVID, FFV1) or .mp4 (mp4v)
  paths, images = psfhs_block_frames(start=3744, count=20)
  images, landmarks, aop = phantom_clip(aop_schedule((90, 140, 100), 60))

Which codecs this OpenCV build writes and reads back: `codec_support(folder)`.
"""

import csv
import os

import cv2
import numpy as np

from aop_tf.io import video  # sets FFmpeg's log level before any capture opens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSFHS_DIR = os.environ.get("AOP_PSFHS_DIR", os.path.join(REPO, "..", "shared", "data", "psfhs"))
# PSFHS file numbers 03744..05101 come in blocks of 40; neighbouring numbers of a block are often
# frames of one recording.
PSFHS_FIRST, PSFHS_BLOCK = 3744, 40
# (fourcc, container) pairs `codec_support` tries.
CODECS = (("MJPG", ".avi"), ("mp4v", ".mp4"), ("avc1", ".mp4"), ("H264", ".mp4"),
          ("XVID", ".avi"), ("FFV1", ".avi"))


def _bgr(image):
  """uint8 [H, W], [H, W, 1] gray or [H, W, 3] RGB -> BGR [H, W, 3] for cv2.VideoWriter."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2 or image.shape[2] == 1:
    return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
  return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def _gray(image):
  """uint8 [H, W], [H, W, 1] or RGB [H, W, 3] -> gray [H, W]."""
  if image.ndim == 3 and image.shape[2] == 3:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  return image.reshape(image.shape[:2])


def _own_mjpeg(path, codec):
  """Whether `write_video` uses OpenCV's own MJPG encoder (three channels only)."""
  return codec == "MJPG" and path.lower().endswith(".avi")


def _writer(path, codec, fps, size_px, is_color):
  """An opened cv2.VideoWriter: MJPG through OpenCV's own encoder at quality 100 (FFmpeg's MJPG
  ignores the quality setting and loses ~2x more), other codecs through FFmpeg."""
  fourcc = cv2.VideoWriter_fourcc(*codec)
  if _own_mjpeg(path, codec):
    writer = cv2.VideoWriter(path, cv2.CAP_OPENCV_MJPEG, fourcc, fps, size_px, True)
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
  else:
    writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, fourcc, fps, size_px, is_color)
  if not writer.isOpened():
    raise RuntimeError(f"{path}: this OpenCV build cannot write {codec} "
                       f"{os.path.splitext(path)[1]} files")
  return writer


def write_video(path, frames, fps=30.0, codec="MJPG", is_color=None):
  """Writes `frames` (an iterable of uint8 [H, W], [H, W, 1] or RGB [H, W, 3], all one size) as a
  video; returns the number of frames written. Consumed lazily: a long clip is never in memory.

  `is_color`: store three channels (True) or one (False, FFmpeg codecs only: gray is then coded
  without a colour conversion); None: as the first frame. MJPG .avi always stores three.
  """
  path = str(path)
  writer, count = None, 0
  try:
    for image in frames:
      image = np.asarray(image, np.uint8)
      if writer is None:
        color = is_color if is_color is not None else image.ndim == 3 and image.shape[2] == 3
        color = bool(color) or _own_mjpeg(path, codec)
        writer = _writer(path, codec, float(fps), (image.shape[1], image.shape[0]), color)
      writer.write(_bgr(image) if color else _gray(image))
      count += 1
  finally:
    if writer is not None:
      writer.release()
  return count


def codec_support(folder, size=64, n_frames=3):
  """{`fourcc+container`: {"write": bool, "read": bool}}: which of `CODECS` this build writes, and
  whether what it wrote reads back (every frame) through `aop_tf.io.video`."""
  pattern = [np.full((size, size), 40 * i + 20, np.uint8) for i in range(n_frames)]
  support = {}
  for codec, suffix in CODECS:
    path = os.path.join(str(folder), f"probe_{codec}{suffix}")
    try:
      wrote = write_video(path, pattern, codec=codec) == n_frames
    except RuntimeError:
      wrote = False
    read = False
    if wrote:
      try:
        with video.VideoSource(path) as source:
          read = len(list(source.frames())) == n_frames
      except ValueError:
        read = False
    support[f"{codec}{suffix}"] = {"write": wrote, "read": read}
  return support


def psfhs_file_numbers(data_dir=PSFHS_DIR):
  """The file numbers listed in PSFHS train.csv and val.csv (sorted ints)."""
  numbers = set()
  for split in ("train", "val"):
    with open(os.path.join(data_dir, f"{split}.csv"), newline="") as f:
      numbers.update(int(os.path.splitext(row["Filename"])[0]) for row in csv.DictReader(f))
  return sorted(numbers)


def psfhs_block_frames(data_dir=PSFHS_DIR, start=PSFHS_FIRST, count=20):
  """`count` consecutive real PSFHS images of one 40-number block, from file number `start` on.

  Returns:
    `(paths, images)`: the PNG paths and uint8 [256, 256] gray images, in file-number order, all
    listed in train.csv or val.csv.

  Raises:
    ValueError when the block of `start` holds fewer than `count` listed files from `start` on.
  """
  block_end = start + PSFHS_BLOCK - 1 - (start - PSFHS_FIRST) % PSFHS_BLOCK
  numbers = [n for n in psfhs_file_numbers(data_dir) if start <= n <= block_end][:count]
  if len(numbers) < count:
    raise ValueError(f"PSFHS block {start}..{block_end} lists {len(numbers)} files, not {count}")
  paths = [os.path.join(data_dir, "images", f"{n:05d}.png") for n in numbers]
  images = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths]
  return paths, images


def aop_schedule(keys_deg=(90.0, 140.0, 100.0), n_frames=60):
  """A piecewise-linear AoP over `n_frames` frames through `keys_deg` (evenly spaced), float64."""
  keys = np.asarray(keys_deg, np.float64)
  return np.interp(np.linspace(0.0, len(keys) - 1.0, n_frames), np.arange(len(keys)), keys)


def phantom_clip(schedule_deg, seed=None, size=256, speckle_change=0.15):
  """A phantom cine loop whose true AoP follows `schedule_deg` (`phantom.make_phantom_frame`).

  Returns:
    `(images, landmarks, aop_deg)`: a list of uint8 [size, size] frames, float32 [N, 3, 2] `(x, y)`
    px (PS1, PS2, FH1) and float32 [N] the AoP of each frame's landmarks.
  """
  from data_prep import phantom  # pylint: disable=import-outside-toplevel
  seed = phantom.CLIP_SEED if seed is None else seed
  images, landmarks, aops = [], [], []
  for k, aop in enumerate(np.asarray(schedule_deg, np.float64)):
    frame = phantom.make_phantom_frame(float(aop), seed=seed, frame=k, size=size,
                                       speckle_change=speckle_change)
    images.append(frame["image"])
    landmarks.append(frame["landmarks"])
    aops.append(frame["aop_deg"])
  return images, np.stack(landmarks), np.asarray(aops, np.float32)
