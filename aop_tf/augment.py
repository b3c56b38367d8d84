"""Landmark-aware data augmentation: a random affine warp, intensity changes, erased boxes.

Everything works in the pixel space of the model input (`S x S` after `data.preprocess_image`),
`(x, y)` = (column, row), pixel centres at integers (the convention of
`tf.raw_ops.ImageProjectiveTransformV3`, checked in tests/test_augment.py). The landmarks move with
the exact matrix that warps the image. All randomness is stateless and comes from an explicit seed
(`example_seed(seed, epoch, index)`), so a pipeline is a pure function of its seed. The knobs are
`config.AugmentSpec` (flags `--aug_*`); augmentation is off in the paper configuration.

Matrices are float32 [3, 3] homogeneous maps of `(x, y, 1)` column vectors. A *forward* matrix takes
input-image points to output-image points (that is how landmarks move); `warp` takes the inverse,
output -> input, which is what the sampling op needs.
"""

import math

import tensorflow as tf

# Tags that keep the random streams of one example independent of each other.
_AFFINE, _INTENSITY, _ERASE = 1, 2, 3


def example_seed(seed, epoch, index):
  """Stateless seed [2] int64 of one example in one epoch: a pure function of its arguments."""
  s = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])
  s = tf.random.experimental.stateless_fold_in(s, tf.cast(epoch, tf.int64))
  return tf.random.experimental.stateless_fold_in(s, tf.cast(index, tf.int64))


def _sub_seed(seed, tag):
  return tf.random.experimental.stateless_fold_in(seed, tf.constant(tag, tf.int64))


def _log_uniform(u, bounds):
  """Maps uniform draws `u` in [0, 1) to log-uniform values in `bounds` = `(min, max)`, min > 0."""
  lo, hi = math.log(bounds[0]), math.log(bounds[1])
  return tf.exp(lo + u * (hi - lo))


def affine_matrix(rotation_deg, scale, translate_px, center_px):
  """Forward matrix [3, 3]: `q = scale * R(rotation) (p - center) + center + translate`.

  Args:
    rotation_deg: scalar, degrees, counter-clockwise as seen on screen (y points down).
    scale: scalar isotropic zoom.
    translate_px: [2] `(dx, dy)`, pixels.
    center_px: [2] `(x, y)` rotation/zoom centre, pixels (the image centre is `(S - 1) / 2`).
  """
  theta = -tf.cast(rotation_deg, tf.float32) * (math.pi / 180.0)
  scale = tf.cast(scale, tf.float32)
  c = tf.cast(tf.convert_to_tensor(center_px), tf.float32)
  t = tf.cast(tf.convert_to_tensor(translate_px), tf.float32)
  cos, sin = scale * tf.cos(theta), scale * tf.sin(theta)
  tx = c[0] - cos * c[0] + sin * c[1] + t[0]
  ty = c[1] - sin * c[0] - cos * c[1] + t[1]
  zero, one = tf.zeros([]), tf.ones([])
  return tf.stack([tf.stack([cos, -sin, tx]), tf.stack([sin, cos, ty]),
                   tf.stack([zero, zero, one])])


def scale_matrix(from_size, to_size):
  """Forward matrix [3, 3] of `geometry.rescale_points` between grids `(width, height)`."""
  f = tf.cast(tf.convert_to_tensor(from_size), tf.float32)
  t = tf.cast(tf.convert_to_tensor(to_size), tf.float32)
  k = t / f
  zero, one = tf.zeros([]), tf.ones([])
  return tf.stack([tf.stack([k[0], zero, 0.5 * k[0] - 0.5]),
                   tf.stack([zero, k[1], 0.5 * k[1] - 0.5]),
                   tf.stack([zero, zero, one])])


def transform_points(points, matrix):
  """Applies an affine `matrix` to `(x, y)` points: [3, 3] to [..., 2], or one matrix per
  example, [B, 3, 3] to [B, K, 2]. Returns float32 points of the same shape."""
  points = tf.cast(tf.convert_to_tensor(points), tf.float32)
  m = tf.cast(matrix, tf.float32)
  if len(m.shape) == 3:
    m = m[:, None]  # [B, 1, 3, 3]: one matrix for the K points of each example
  return tf.linalg.matvec(m[..., :2, :2], points) + m[..., :2, 2]


def warp(image, output_to_input, output_size, interpolation="bilinear", fill_value=0.0):
  """Resamples an image through an affine map with `ImageProjectiveTransformV3`.

  Args:
    image: [H, W, C] (float32, or an integer type with "nearest").
    output_to_input: [3, 3] matrix taking output pixel coordinates to input pixel coordinates
      (pixel centres at integers), i.e. the inverse of the forward warp.
    output_size: `(width, height)` python ints of the output.
    interpolation: "bilinear" (images) or "nearest" (label masks).
    fill_value: value outside the input.

  Returns:
    [height, width, C], the dtype of `image`.
  """
  m = tf.cast(output_to_input, tf.float32)
  m = m / m[2, 2]
  transforms = tf.reshape(m, [9])[:8][None, :]
  width, height = int(output_size[0]), int(output_size[1])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transforms, output_shape=tf.constant([height, width]),
      fill_value=tf.cast(fill_value, tf.float32), interpolation=interpolation.upper(),
      fill_mode="CONSTANT")[0]
  out.set_shape([height, width, image.shape[-1]])
  return out


def _inside(points, size_px):
  size = tf.cast(size_px, tf.float32)
  return tf.reduce_all(tf.logical_and(points >= 0.0, points <= size - 1.0))


def random_affine(seed, spec, size_px, landmarks_px=None):
  """Draws a forward matrix [3, 3] for an image of `size_px` `(width, height)` python ints.

  With `spec.keep_landmarks_inside` and `landmarks_px` [K, 2], the first of `spec.max_tries`
  draws that keeps every landmark inside the image is used, the identity if none does.
  """
  width, height = float(size_px[0]), float(size_px[1])
  center = tf.constant([(width - 1.0) / 2.0, (height - 1.0) / 2.0])
  candidates, valid = [], []
  for attempt in range(spec.max_tries):
    s = tf.random.experimental.stateless_fold_in(_sub_seed(seed, _AFFINE), attempt)
    u = tf.random.stateless_uniform([5], seed=s)
    rotation = (2.0 * u[0] - 1.0) * spec.rotation_deg
    scale = _log_uniform(u[1], spec.scale_range)
    shift = (2.0 * u[2:4] - 1.0) * spec.translate_frac * tf.constant([width, height])
    m = affine_matrix(rotation, scale, shift, center)
    apply = u[4] < spec.affine_prob
    m = tf.where(apply, m, tf.eye(3))
    candidates.append(m)
    if spec.keep_landmarks_inside and landmarks_px is not None:
      valid.append(_inside(transform_points(landmarks_px, m), (width, height)))
    else:
      valid.append(tf.constant(True))
    if not spec.keep_landmarks_inside or landmarks_px is None:
      break
  valid = tf.stack(valid)
  # First valid candidate, else the identity (appended last, always valid).
  candidates = tf.stack(candidates + [tf.eye(3)])
  choice = tf.argmax(tf.cast(tf.concat([valid, [True]], 0), tf.int32), output_type=tf.int32)
  return candidates[choice]


def random_intensity(image, seed, spec):
  """Gamma, contrast, brightness and Gaussian noise on a float image [H, W, C] in 0..255.

  Returns float32 [H, W, C] clipped to 0..255. With probability `1 - spec.intensity_prob` the
  image is returned unchanged.
  """
  image = tf.cast(image, tf.float32)
  s = _sub_seed(seed, _INTENSITY)
  u = tf.random.stateless_uniform([4], seed=s)
  gamma = _log_uniform(u[0], spec.gamma_range)
  contrast = 1.0 + (2.0 * u[1] - 1.0) * spec.contrast
  brightness = (2.0 * u[2] - 1.0) * spec.brightness * 255.0
  out = 255.0 * tf.pow(tf.clip_by_value(image / 255.0, 0.0, 1.0), gamma)
  mean = tf.reduce_mean(out)
  out = (out - mean) * contrast + mean + brightness
  if spec.noise_std > 0:
    noise = tf.random.stateless_normal(tf.shape(out), seed=tf.random.experimental.stateless_fold_in(
        s, 1))
    out = out + spec.noise_std * noise
  out = tf.clip_by_value(out, 0.0, 255.0)
  return tf.where(u[3] < spec.intensity_prob, out, image)


def random_erase(image, seed, spec):
  """Blanks 1..`spec.erase_boxes` random boxes of a float image [H, W, C] to `spec.fill_value`.

  Box centres are uniform over the image (boxes may be cut by its border), areas and aspect ratios
  log-uniform in `erase_area_range` (fraction of H * W) and `erase_aspect_range` (width / height).
  With probability `1 - spec.erase_prob` the image is returned unchanged. Landmarks do not move.
  `augment` erases before the intensity changes, so boxes end up near, not at, `fill_value`: a box
  stands for an acoustic shadow inside the scan, where gain, contrast and speckle act as elsewhere.
  """
  image = tf.cast(image, tf.float32)
  if spec.erase_prob <= 0.0:
    return image
  height, width = int(image.shape[0]), int(image.shape[1])
  n = int(spec.erase_boxes)
  s = _sub_seed(seed, _ERASE)
  u = tf.random.stateless_uniform([n, 4], seed=s)
  draw = tf.random.stateless_uniform([2], seed=tf.random.experimental.stateless_fold_in(s, 1))
  area = _log_uniform(u[:, 0], spec.erase_area_range) * float(height * width)
  aspect = _log_uniform(u[:, 1], spec.erase_aspect_range)
  half_w, half_h = 0.5 * tf.sqrt(area * aspect), 0.5 * tf.sqrt(area / aspect)  # [n] pixels
  cx = u[:, 2] * width - 0.5
  cy = u[:, 3] * height - 0.5
  count = 1 + tf.minimum(tf.cast(draw[0] * n, tf.int32), n - 1)
  active = tf.range(n) < count
  xs = tf.range(width, dtype=tf.float32)
  ys = tf.range(height, dtype=tf.float32)
  in_x = tf.abs(xs[None, :] - cx[:, None]) < half_w[:, None]  # [n, W]
  in_y = tf.abs(ys[None, :] - cy[:, None]) < half_h[:, None]  # [n, H]
  boxes = tf.logical_and(in_y[:, :, None], in_x[:, None, :])  # [n, H, W]
  erased = tf.reduce_any(tf.logical_and(boxes, active[:, None, None]), axis=0)
  erased = tf.logical_and(erased, draw[1] < spec.erase_prob)
  return tf.where(erased[:, :, None], tf.cast(spec.fill_value, tf.float32), image)


def augment(image, landmarks_px, seed, spec):
  """Augments one example in model-input pixel space.

  Args:
    image: float32 [S, S, C] (any H, W) in 0..255, e.g. from `data.preprocess_image`.
    landmarks_px: [K, 2] `(x, y)` in the pixels of `image`, or None (an unlabeled image: no warp
      is redrawn to keep landmarks inside).
    seed: [2] stateless seed, e.g. `example_seed(seed, epoch, index)`.
    spec: `config.AugmentSpec`.

  Returns:
    image: float32 [S, S, C] in 0..255.
    landmarks_px: float32 [K, 2], moved with the same matrix as the image (None without).
    forward: float32 [3, 3] input -> output matrix (to warp masks, or move predicted points, the
      same way).
  """
  height, width = int(image.shape[0]), int(image.shape[1])
  forward = random_affine(seed, spec, (width, height), landmarks_px)
  image = warp(tf.cast(image, tf.float32), tf.linalg.inv(forward), (width, height), "bilinear",
               spec.fill_value)
  # Erase before the intensity changes (see `random_erase`).
  image = random_intensity(random_erase(image, seed, spec), seed, spec)
  moved = None if landmarks_px is None else transform_points(landmarks_px, forward)
  return image, moved, forward
