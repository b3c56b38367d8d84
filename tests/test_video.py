"""aop_tf.io.video and aop_tf.io.frame_folder: clips read a frame at a time, as the PNGs they hold.

The videos are written here (tests/clip_files.py) from 20 consecutive real PSFHS frames when the
data is present (else from phantom frames; the fidelity bounds need the real ones).
"""

import math
import os
import tracemalloc

import cv2
import numpy as np
import pytest

import clip_files
from aop_tf import geometry
from aop_tf.io import frame_folder
from aop_tf.io import frames
from aop_tf.io import video

HAVE_PSFHS = os.path.isfile(os.path.join(clip_files.PSFHS_DIR, "val.csv"))
needs_psfhs = pytest.mark.skipif(not HAVE_PSFHS, reason=f"PSFHS data not found at "
                                 f"{clip_files.PSFHS_DIR} (set AOP_PSFHS_DIR)")
N_FRAMES = 20
FPS = 30.0
# Measured on PSFHS 03744..03763 (256x256): MJPG at quality 100 (OpenCV's encoder): mean 0.86,
# max 8 levels; mp4v (FFmpeg MPEG-4 Part 2, gray): mean 1.94, max 33 (its quantiser cannot go lower
# through OpenCV: bitrate makes no difference).
PIXEL_BOUNDS = {"avi": (1.2, 12), "mp4": (2.6, 48)}  # (mean, max) |video - PNG|, levels
# Shipped model, landmarks on the decoded frames vs on the PNGs (max over 20 frames x 3 points):
# the session-11 ensemble MJPG 0.28 px, mp4v 1.04 px; the distilled student (psfhs from session
# 12) 0.58 and 1.13 px, one network being less smooth than an average of four.
LANDMARK_BOUNDS_PX = {"avi": 0.8, "mp4": 1.5}


@pytest.fixture(scope="module")
def pngs():
  """`(paths, images)`: the clip's frames as PNG files and uint8 [H, W] arrays."""
  if HAVE_PSFHS:
    return clip_files.psfhs_block_frames(count=N_FRAMES)
  images, _, _ = clip_files.phantom_clip(np.linspace(95, 130, N_FRAMES), size=128)
  return [None] * N_FRAMES, images


@pytest.fixture(scope="module")
def clips(tmp_path_factory, pngs):
  """{"avi": MJPG .avi, "mp4": mp4v .mp4} of the same frames, at `FPS`."""
  folder = tmp_path_factory.mktemp("clips")
  out = {"avi": str(folder / "clip.avi"), "mp4": str(folder / "clip.mp4")}
  assert clip_files.write_video(out["avi"], pngs[1], FPS, "MJPG") == N_FRAMES
  assert clip_files.write_video(out["mp4"], pngs[1], FPS, "mp4v") == N_FRAMES
  return out


def _all(path, selection=frames.ALL_FRAMES):
  with frames.open_source(path) as source:
    return list(source.frames(selection))


def _error(function, *args):
  """The message of the FrameError `function(*args)` raises, checked to be one line."""
  with pytest.raises(frames.FrameError) as info:
    function(*args)
  message = str(info.value)
  assert "\n" not in message, message
  return message


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_count_rate_times_and_gray_frames(clips, pngs, kind):
  with frames.open_source(clips[kind]) as source:
    assert isinstance(source, video.VideoSource)
    height, width = pngs[1][0].shape
    assert (source.info.kind, source.info.n_frames, source.info.fps) == ("video", N_FRAMES, FPS)
    assert source.info.size_px == (width, height) and source.info.is_clip
    got = list(source.frames())
  assert [f.index for f in got] == list(range(N_FRAMES))
  np.testing.assert_allclose([f.time_s for f in got], np.arange(N_FRAMES) / FPS, atol=1e-6)
  for f in got:
    assert f.image.dtype == np.uint8 and f.image.shape == (height, width, 1)
    assert f.in_clip and f.name == f"{clips[kind]}#{f.index}"


@needs_psfhs
@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_pixels_match_the_pngs(clips, pngs, kind):
  decoded = np.stack([f.image[..., 0] for f in _all(clips[kind])]).astype(np.int16)
  diff = np.abs(decoded - np.stack(pngs[1]))
  mean_bound, max_bound = PIXEL_BOUNDS[kind]
  assert diff.mean() <= mean_bound and diff.max() <= max_bound, (diff.mean(), diff.max())


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_random_access_equals_sequential(clips, kind):
  sequential = _all(clips[kind])
  with video.VideoSource(clips[kind]) as source:
    for index in (7, 3, 19, 0, 12, 12, 11, 5, 16):  # back, forward, far, repeated
      frame = source.frame(index)
      np.testing.assert_array_equal(frame.image, sequential[index].image)
      assert frame.time_s == pytest.approx(sequential[index].time_s)
    assert "frame 20 does not exist" in _error(source.frame, N_FRAMES)


class _LateSeeks:
  """A capture whose seeks land one frame late, as with some containers' broken indexes."""

  def __init__(self, capture):
    self._capture = capture

  def set(self, prop, value):
    return self._capture.set(prop, value + 1 if prop == cv2.CAP_PROP_POS_FRAMES else value)

  def __getattr__(self, name):
    return getattr(self._capture, name)


def test_unreliable_seek_falls_back_to_decoding_forward(clips, monkeypatch):
  sequential = _all(clips["mp4"])
  real_capture = video._capture  # pylint: disable=protected-access
  monkeypatch.setattr(video, "_capture", lambda path: _LateSeeks(real_capture(path)))
  with video.VideoSource(clips["mp4"]) as source:
    for index in (15, 4, 0, 19, 2):  # 4: the first seek, found late; then forward from 0
      np.testing.assert_array_equal(source.frame(index).image, sequential[index].image)
    assert not source._seek_ok  # pylint: disable=protected-access
    got = list(source.frames(frames.parse_selection("12:")))
  assert [f.index for f in got] == list(range(12, N_FRAMES))
  for f in got:
    np.testing.assert_array_equal(f.image, sequential[f.index].image)


@pytest.mark.parametrize("text, indices", [("every:2", list(range(0, N_FRAMES, 2))),
                                           ("3:7", [3, 4, 5, 6, 7]), ("15:", list(range(15, 20))),
                                           ("2:17:5", [2, 7, 12, 17])])
def test_selections(clips, text, indices):
  sequential = _all(clips["avi"])
  got = _all(clips["avi"], frames.parse_selection(text))
  assert [f.index for f in got] == indices
  for f in got:
    np.testing.assert_array_equal(f.image, sequential[f.index].image)
    assert f.time_s == pytest.approx(f.index / FPS)


def test_colour_and_near_gray_video(tmp_path, pngs):
  gray = pngs[1][:4]
  # Gray stored as three channels by a lossy codec comes back a few levels apart: still gray.
  path = str(tmp_path / "rgb_coded_gray.mp4")
  clip_files.write_video(path, gray, codec="mp4v", is_color=True)
  assert all(f.image.shape[2] == 1 for f in _all(path))
  # Real colour (a red box) comes back RGB, red in channel 0.
  colour = [np.repeat(g[..., None], 3, axis=2) for g in gray]
  for image in colour:
    image[8:40, 8:40] = (230, 20, 20)
  path = str(tmp_path / "colour.avi")
  clip_files.write_video(path, colour)
  for f in _all(path):
    assert f.image.shape[2] == 3
    red, green, blue = f.image[24, 24].astype(int)
    assert red > 180 and green < 70 and blue < 70


def test_frame_numbers():
  assert frame_folder.frame_number("frame_0012.png") == 12
  assert frame_folder.frame_number("img7.jpg") == 7
  assert frame_folder.frame_number("run2_frame10.png") == 10
  assert frame_folder.frame_number("/a/b3/scan.png") is None


def _write_frames(folder, names):
  """PNGs whose pixel value is their position in `names` (x 10), so order shows in the pixels."""
  os.makedirs(folder, exist_ok=True)
  for k, name in enumerate(names):
    cv2.imwrite(os.path.join(folder, name), np.full((6, 8), 10 * k, np.uint8))


def test_frame_folder_sorted_naturally(tmp_path):
  folder = str(tmp_path / "clip")
  names = [f"frame{n}.png" for n in range(1, 13)]
  _write_frames(folder, names)
  _write_frames(os.path.join(folder, "sub"), ["frame99.png"])  # subfolders are not frames
  _write_frames(folder, [".frame0.png"])  # nor hidden files
  (tmp_path / "clip" / "notes.txt").write_text("not a frame")
  with frames.open_source(folder) as source:
    assert isinstance(source, frame_folder.FrameFolderSource)
    info = source.info
    assert (info.kind, info.n_frames, info.size_px, info.is_clip) == ("frames", 12, (8, 6), True)
    assert math.isnan(info.fps)
    got = list(source.frames())
    assert [int(f.image[0, 0, 0]) for f in got] == [10 * k for k in range(12)]
    assert all(math.isnan(f.time_s) and f.image.shape == (6, 8, 1) for f in got)
    assert int(source.frame(9).image[0, 0, 0]) == 90  # frame10.png
    assert [f.index for f in source.frames(frames.parse_selection("every:5"))] == [0, 5, 10]


def test_frame_folder_errors_name_the_files(tmp_path):
  dup = str(tmp_path / "dup")
  _write_frames(dup, ["frame1.png", "frame01.png", "frame2.png"])
  message = _error(frame_folder.FrameFolderSource, dup)
  assert "frame01.png" in message and "frame1.png" in message and "number 1" in message
  mixed = str(tmp_path / "mixed")
  _write_frames(mixed, ["frame1.png", "scan.png"])
  assert "scan.png: no frame number" in _error(frame_folder.FrameFolderSource, mixed)
  empty = tmp_path / "empty"
  empty.mkdir()
  assert str(empty) in _error(frame_folder.FrameFolderSource, str(empty))
  broken = str(tmp_path / "broken")
  _write_frames(broken, ["f1.png", "f2.png"])
  with open(os.path.join(broken, "f2.png"), "r+b") as f:
    f.truncate(20)
  with frame_folder.FrameFolderSource(broken) as source:
    message = _error(source.frame, 1)
  assert "f2.png" in message and "frame 1" in message


def test_truncated_avi_yields_frames_then_names_the_cut(tmp_path, clips):
  path = str(tmp_path / "cut.avi")
  with open(clips["avi"], "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  got = []

  def read_all():
    with frames.open_source(path) as source:
      assert source.info.n_frames == N_FRAMES  # the header still claims them all
      for frame in source.frames():
        got.append(frame.index)

  message = _error(read_all)
  assert got == list(range(len(got))) and 0 < len(got) < N_FRAMES
  assert message == (f"{path}: frame {len(got)} could not be decoded (the file ends or is corrupt "
                     f"after frame {len(got) - 1})")
  with video.VideoSource(path) as source:  # random access past the cut: the same cut
    assert f"frame {len(got)} could not be decoded" in _error(source.frame, N_FRAMES - 1)


def test_unreadable_videos_name_the_file(tmp_path, clips):
  cut = str(tmp_path / "cut.mp4")  # an MP4 cut in half loses its index (moov) at the end
  with open(clips["mp4"], "rb") as f:
    data = f.read()
  with open(cut, "wb") as f:
    f.write(data[:len(data) // 2])
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(os.urandom(5000))
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  zero = str(tmp_path / "zero.avi")  # a valid container without frames
  writer = cv2.VideoWriter(zero, cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), FPS,
                           (32, 32))
  writer.release()
  missing = str(tmp_path / "missing.avi")
  expected = {cut: "looks like an MP4/MOV file", str(garbage): "not a video file",
              str(empty): "empty file", zero: "no decodable frame", missing: "cannot read"}
  for path, detail in expected.items():
    message = _error(frames.open_source, path)
    assert message.startswith(f"{path}: ") and detail in message, message
  assert "re-encode it as MJPG .avi" in _error(video.VideoSource, str(garbage))


def test_long_clip_streams_in_constant_memory(tmp_path):
  n, side = 2000, 64
  path = str(tmp_path / "long.avi")
  ramp = np.arange(side)[None, :] * 2 + np.zeros((side, 1), int)
  assert clip_files.write_video(
      path, ((ramp + i) % 256 for i in range(n)), fps=25) == n  # written as generated
  tracemalloc.start()
  try:
    count, last = 0, None
    with video.VideoSource(path) as source:
      assert source.info.n_frames == n
      for last in source.frames():
        count += 1
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert count == n and last.index == n - 1 and last.time_s == pytest.approx((n - 1) / 25)
  # All frames kept would be 2000 x 4 KiB = 8 MiB; one at a time stays far below.
  assert peak < 1 << 20, peak


def test_phantom_clip_follows_its_aop_schedule():
  schedule = clip_files.aop_schedule((90, 140, 100), 60)
  images, landmarks, aop = clip_files.phantom_clip(schedule, size=128)
  assert len(images) == 60 and landmarks.shape == (60, 3, 2) and aop.dtype == np.float32
  true_aop = np.asarray(geometry.aop_deg(landmarks))
  np.testing.assert_allclose(true_aop, schedule, atol=0.01)
  np.testing.assert_allclose(aop, schedule, atol=0.01)
  assert np.all(landmarks[:, :2] == landmarks[0, :2])  # the symphysis stays; the head moves
  step = np.abs(np.diff(np.stack(images).astype(np.int16), axis=0)).mean(axis=(1, 2))
  assert np.all(step > 0.5) and np.all(step < 15), step  # speckle and head change a little


@needs_psfhs
def test_shipped_model_sees_the_pngs_in_the_videos(clips, pngs):
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  model = predictor.load("psfhs")
  reference = model.predict([image[..., None] for image in pngs[1]])
  for kind, bound in LANDMARK_BOUNDS_PX.items():
    out = model.predict([f.image for f in _all(clips[kind])])
    error = np.linalg.norm(out["landmarks"] - reference["landmarks"], axis=-1).max()
    assert error <= bound, (kind, error)
