"""Tests of the landmark-aware augmentation (aop_tf/augment.py)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from aop_tf import augment, config, data, geometry

# Geometry only: intensity changes off, always warp, strong enough to matter.
AFFINE_ONLY = config.AugmentSpec(affine_prob=1.0, rotation_deg=25.0, scale_range=(0.8, 1.25),
                                 translate_frac=0.1, intensity_prob=0.0)


def _warp_forward(image, forward, interpolation="bilinear"):
  h, w = image.shape[:2]
  return augment.warp(tf.convert_to_tensor(image), tf.linalg.inv(forward), (w, h),
                      interpolation).numpy()


def _centroid(image, around, radius):
  """Intensity-weighted centroid `(x, y)` of a [H, W] image within `radius` of `around`."""
  yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
  near = (xx - around[0]) ** 2 + (yy - around[1]) ** 2 <= radius ** 2
  weights = np.where(near, image, 0.0)
  return np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum()


# --- the op's conventions -----------------------------------------------------------------------


def test_warp_convention_pixel_centres_at_integers():
  image = np.zeros((16, 16, 1), np.float32)
  image[5, 3] = 1.0  # (x, y) = (3, 5)
  out = _warp_forward(image, tf.eye(3))
  np.testing.assert_array_equal(out, image)
  # A sub-pixel shift moves the centroid by exactly that much (bilinear splits the pixel).
  shifted = _warp_forward(image, augment.affine_matrix(0.0, 1.0, [0.25, -0.5], [7.5, 7.5]))
  np.testing.assert_allclose(_centroid(shifted[..., 0], (3, 5), 3), [3.25, 4.5], atol=1e-5)
  # 90 degrees about the centre (S - 1) / 2 maps pixel centres onto pixel centres.
  forward = augment.affine_matrix(90.0, 1.0, [0.0, 0.0], [7.5, 7.5])
  rotated = _warp_forward(image, forward)
  expected = augment.transform_points([3.0, 5.0], forward).numpy()
  np.testing.assert_allclose(expected, np.rint(expected), atol=1e-4)
  ys, xs = np.nonzero(rotated[..., 0] > 1e-3)
  assert list(zip(xs, ys)) == [tuple(np.rint(expected).astype(int))]
  assert rotated.max() == pytest.approx(1.0, abs=1e-4)


def test_warp_nearest_keeps_labels_and_dtype():
  mask = np.zeros((12, 12, 1), np.uint8)
  mask[2:6, 3:9] = 1
  mask[7:11, 1:5] = 2
  out = _warp_forward(mask, augment.affine_matrix(30.0, 1.1, [1.0, -1.0], [5.5, 5.5]), "nearest")
  assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2}


def test_affine_matrix_hand_worked():
  # Positive angles turn counter-clockwise on screen (y down): +x goes to -y.
  m = augment.affine_matrix(90.0, 2.0, [1.0, 3.0], [10.0, 10.0])
  np.testing.assert_allclose(augment.transform_points([11.0, 10.0], m), [11.0, 11.0], atol=1e-5)
  np.testing.assert_allclose(augment.transform_points([10.0, 10.0], m), [11.0, 13.0], atol=1e-5)


def test_scale_matrix_is_rescale_points():
  points = np.array([[0.0, 0.0], [12.3, 200.7], [-0.5, 255.5]], np.float32)
  m = augment.scale_matrix((256, 200), (64, 50))
  np.testing.assert_allclose(augment.transform_points(points, m),
                             geometry.rescale_points(points, (256, 200), (64, 50)), atol=1e-4)


# --- landmarks stay on the anatomy --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_single_bright_pixel_follows_its_landmark(seed):
  size = 96
  landmark = np.array([[40.0, 57.0]], np.float32)
  image = np.zeros((size, size, 1), np.float32)
  image[57, 40] = 255.0
  out, moved, _ = augment.augment(image, landmark, tf.constant([seed, 1], tf.int64), AFFINE_ONLY)
  out, moved = out.numpy()[..., 0], moved.numpy()[0]
  y, x = np.unravel_index(np.argmax(out), out.shape)
  assert np.hypot(x - moved[0], y - moved[1]) <= 0.75
  np.testing.assert_allclose(_centroid(out, moved, 3), moved, atol=0.3)


@pytest.mark.parametrize("seed", range(4))
def test_subpixel_blob_centroid_follows_its_landmark(seed):
  size = 96
  landmark = np.array([[40.3, 57.8]], np.float32)
  yy, xx = np.mgrid[:size, :size]
  blob = 255.0 * np.exp(-((xx - 40.3) ** 2 + (yy - 57.8) ** 2) / (2 * 2.0 ** 2))
  out, moved, _ = augment.augment(blob[..., None].astype(np.float32), landmark,
                                  tf.constant([seed, 2], tf.int64), AFFINE_ONLY)
  np.testing.assert_allclose(_centroid(out.numpy()[..., 0], moved[0].numpy(), 9), moved[0],
                             atol=0.05)


def _phantom(seed):
  from data_prep import phantom
  return phantom, phantom.make_phantom(seed, size=256, mark_landmarks=True)


@pytest.mark.parametrize("seed", range(3))
def test_phantom_markers_stay_the_brightest_at_moved_landmarks(seed):
  phantom, p = _phantom(seed)
  image = p["image"][..., None].astype(np.float32)
  markers_px = np.rint(p["landmarks"]).astype(np.float32)  # markers sit on the nearest pixels
  out, moved, forward = augment.augment(image, markers_px, tf.constant([seed, 3], tf.int64),
                                        AFFINE_ONLY)
  out, moved = out.numpy()[..., 0], moved.numpy()
  assert not np.allclose(forward, np.eye(3))
  threshold = phantom.MARKER_VALUE - phantom.MARKER_GAP / 2
  bright = np.where(out > threshold, out, 0.0)
  for point in moved:
    x, y = np.rint(point).astype(int)
    # The marker is the brightest thing around (everything else is dimmed by MARKER_GAP).
    assert out[y - 1:y + 2, x - 1:x + 2].max() > threshold
    # Thresholding quantises the centroid; the next test checks the position exactly.
    np.testing.assert_allclose(_centroid(bright, point, 3.0), point, atol=0.75)


@pytest.mark.parametrize("seed", range(3))
def test_phantom_markers_follow_landmarks_through_resize_and_warp(seed):
  """The pipeline's composition: resize to the input, landmarks to input pixels, augment."""
  phantom, p = _phantom(seed)
  # Only the markers (every other pixel is dimmed below MARKER_VALUE), so centroids are exact.
  markers = np.where(p["image"] == phantom.MARKER_VALUE, 255, 0).astype(np.uint8)[..., None]
  input_size = 192
  image = data.preprocess_image(markers, input_size, 1)
  markers_px = np.rint(p["landmarks"]).astype(np.float32)
  markers_in = geometry.rescale_points(markers_px, (256, 256), (input_size, input_size))
  out, moved, _ = augment.augment(image, markers_in, tf.constant([seed, 4], tf.int64),
                                  AFFINE_ONLY)
  out, moved = out.numpy()[..., 0], moved.numpy()
  for point in moved:
    np.testing.assert_allclose(_centroid(out, point, 5.0), point, atol=0.1)
  # And back in original pixels, as make_dataset reports them.
  back = geometry.rescale_points(moved, (input_size, input_size), (256, 256))
  forward_orig = (augment.scale_matrix((input_size,) * 2, (256, 256)).numpy()
                  @ augment.random_affine(tf.constant([seed, 4], tf.int64), AFFINE_ONLY,
                                          (input_size, input_size), markers_in).numpy()
                  @ augment.scale_matrix((256, 256), (input_size,) * 2).numpy())
  np.testing.assert_allclose(back, augment.transform_points(markers_px, forward_orig), atol=1e-3)


def test_phantom_mask_labels_follow_the_image():
  _, p = _phantom(5)
  image = p["image"][..., None].astype(np.float32)
  forward = augment.random_affine(tf.constant([5, 5], tf.int64), AFFINE_ONLY, (256, 256))
  warped_image = _warp_forward(image, forward)[..., 0]
  warped_mask = _warp_forward(p["mask"][..., None], forward, "nearest")[..., 0]
  # The symphysis is the brightest structure: its warped pixels stay bright.
  assert warped_image[warped_mask == 1].mean() > 2 * warped_image[warped_mask == 0].mean()


# --- randomness ---------------------------------------------------------------------------------


def test_stateless_and_seeded():
  image = np.random.default_rng(0).uniform(0, 255, (32, 32, 1)).astype(np.float32)
  points = np.array([[10.0, 12.0], [20.0, 8.0], [16.0, 25.0]], np.float32)
  cfg = config.AugmentSpec(affine_prob=1.0, intensity_prob=1.0)
  seed = augment.example_seed(3, 1, 7)
  a = augment.augment(image, points, seed, cfg)
  b = augment.augment(image, points, augment.example_seed(3, 1, 7), cfg)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  for other in (augment.example_seed(4, 1, 7), augment.example_seed(3, 2, 7),
                augment.example_seed(3, 1, 8)):
    assert not np.array_equal(augment.augment(image, points, other, cfg)[0], a[0])


def test_keep_landmarks_inside():
  cfg = config.AugmentSpec(affine_prob=1.0, translate_frac=0.45, max_tries=3)
  points = np.array([[2.0, 3.0], [60.0, 61.0], [30.0, 30.0]], np.float32)
  identity = 0
  for i in range(40):
    m = augment.random_affine(augment.example_seed(0, 0, i), cfg, (64, 64), points)
    moved = augment.transform_points(points, m).numpy()
    assert np.all(moved >= 0.0) and np.all(moved <= 63.0)
    identity += int(np.allclose(m, np.eye(3)))
  assert identity < 40  # some draws are accepted, not all replaced by the identity


def test_intensity():
  image = np.random.default_rng(1).uniform(0, 255, (24, 24, 1)).astype(np.float32)
  seed = tf.constant([1, 2], tf.int64)
  off = config.AugmentSpec(intensity_prob=0.0)
  np.testing.assert_array_equal(augment.random_intensity(image, seed, off), image)
  neutral = config.AugmentSpec(intensity_prob=1.0, brightness=0.0, contrast=0.0,
                               gamma_range=(1.0, 1.0), noise_std=0.0)
  np.testing.assert_allclose(augment.random_intensity(image, seed, neutral), image, atol=1e-3)
  strong = config.AugmentSpec(intensity_prob=1.0, brightness=0.5, contrast=0.9,
                              gamma_range=(0.3, 3.0), noise_std=50.0)
  out = augment.random_intensity(image, seed, strong).numpy()
  assert out.min() >= 0.0 and out.max() <= 255.0 and not np.allclose(out, image)


def test_random_erase_blanks_boxes_of_the_drawn_size_and_nothing_else():
  image = np.random.default_rng(2).uniform(1, 255, (64, 48, 1)).astype(np.float32)
  off = config.AugmentSpec(erase_prob=0.0)
  np.testing.assert_array_equal(augment.random_erase(image, tf.constant([1, 2], tf.int64), off),
                                image)
  cfg = config.AugmentSpec(erase_prob=1.0, erase_boxes=1, erase_area_range=(0.05, 0.05),
                           erase_aspect_range=(1.0, 1.0), fill_value=0.0)
  side = np.sqrt(0.05 * 64 * 48)  # 12.4 px
  for i in range(20):
    out = augment.random_erase(image, augment.example_seed(0, 0, i), cfg).numpy()
    blank = out[..., 0] == 0.0
    np.testing.assert_array_equal(out[~blank], image[~blank])  # the rest is untouched
    rows, cols = np.nonzero(blank)
    assert blank.any()
    # One square box, possibly cut by the border: never wider or taller than its side, and the
    # full side (12 or 13 pixels) wherever the border does not cut it.
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert height <= np.ceil(side) and width <= np.ceil(side)
    assert blank.sum() == height * width  # a rectangle
    if 0 < rows.min() and rows.max() < 63:
      assert height >= np.floor(side)
  many = config.AugmentSpec(erase_prob=1.0, erase_boxes=3, erase_area_range=(0.01, 0.02))
  counts = set()
  for i in range(30):
    out = augment.random_erase(image, augment.example_seed(0, 1, i), many).numpy()
    counts.add(int((out == 0.0).sum() > 0.021 * 64 * 48))  # more than one box's largest area
    assert (out == 0.0).mean() <= 3 * 0.02 + 1e-6
  assert counts == {0, 1}  # sometimes one box, sometimes more
  half = config.AugmentSpec(erase_prob=0.5)
  erased = [not np.array_equal(augment.random_erase(image, augment.example_seed(1, 0, i), half),
                               image) for i in range(60)]
  assert 15 < sum(erased) < 45


def test_erased_boxes_take_the_intensity_changes_like_the_rest():
  # The documented order (augment.random_erase): erase, then gain/contrast/noise, as in a shadow.
  image = np.random.default_rng(4).uniform(60, 200, (32, 32, 1)).astype(np.float32)
  points = np.array([[10.0, 12.0], [20.0, 8.0], [16.0, 25.0]], np.float32)
  cfg = config.AugmentSpec(affine_prob=0.0, intensity_prob=1.0, brightness=0.2, contrast=0.0,
                           gamma_range=(1.0, 1.0), noise_std=0.0, erase_prob=1.0,
                           erase_area_range=(0.1, 0.1))
  lifted = 0
  for i in range(8):
    seed = augment.example_seed(6, 0, i)
    out = augment.augment(image, points, seed, cfg)[0].numpy()
    erased = augment.random_erase(image, seed, cfg).numpy() == 0.0
    shift = out[~erased] - image[~erased]
    np.testing.assert_allclose(shift, shift.flat[0], atol=1e-3)  # one brightness shift
    np.testing.assert_allclose(out[erased], max(0.0, float(shift.flat[0])), atol=1e-3)
    lifted += float(shift.flat[0]) > 1.0
  assert lifted > 0  # some boxes end up above the fill value


def test_erasing_leaves_the_warp_and_landmarks_alone():
  image = np.random.default_rng(3).uniform(0, 255, (32, 32, 1)).astype(np.float32)
  points = np.array([[10.0, 12.0], [20.0, 8.0], [16.0, 25.0]], np.float32)
  base = config.AugmentSpec(affine_prob=1.0, intensity_prob=0.0)
  seed = augment.example_seed(5, 0, 2)
  plain = augment.augment(image, points, seed, base)
  erased = augment.augment(image, points, seed, dataclasses.replace(base, erase_prob=1.0))
  np.testing.assert_array_equal(plain[1], erased[1])
  np.testing.assert_array_equal(plain[2], erased[2])
  changed = erased[0].numpy() != plain[0].numpy()
  assert changed.any() and np.all(erased[0].numpy()[changed] == base.fill_value)


def test_config_validation_names_the_flag():
  cfg = config.AugmentSpec(scale_range=[0.9, 1.2])
  assert cfg.scale_range == (0.9, 1.2)
  with pytest.raises(ValueError, match="--aug_affine_prob"):
    config.AugmentSpec(affine_prob=1.5)
  with pytest.raises(ValueError, match="--aug_gamma_range"):
    config.AugmentSpec(gamma_range=(1.2, 0.8))
  with pytest.raises(ValueError, match="--aug_erase_prob"):
    config.AugmentSpec(erase_prob=-0.1)
  with pytest.raises(ValueError, match="--aug_erase_boxes"):
    config.AugmentSpec(erase_boxes=0)
  with pytest.raises(ValueError, match="--aug_erase_area_range"):
    config.AugmentSpec(erase_area_range=(0.1, 1.5))
  assert config.AugmentSpec(erase_aspect_range=[0.5, 2]).erase_aspect_range == (0.5, 2.0)
  assert dataclasses.replace(cfg, rotation_deg=1.0).rotation_deg == 1.0
