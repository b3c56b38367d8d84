"""Model outputs -> landmarks, AoP and confidence: the decoder every consumer calls.

Training-time validation, evaluation, the SavedModel signatures and TFLite all decode through
`decode_outputs`, so their numbers agree. Landmarks are `(x, y)` in original-image pixels, order
PS1, PS2, FH1.
"""

import tensorflow as tf

from aop_tf import geometry
from aop_tf import heatmap
from aop_tf import tangent

# Where FH1 comes from: its own heatmap, or the tangent from the decoded PS1 to the predicted
# fetal-head region (the IUGC definition of FH1; needs a segmentation head).
FH1_METHODS = ("heatmap", "tangent")
# The head map is upsampled (bilinear) by this factor before the tangent search, so the tangent
# point is found on sub-cell boundaries.
TANGENT_UPSAMPLE = 4


def heatmaps_of(outputs):
  """The heatmap tensor of a model output: a dict with "heatmaps", or the tensor itself."""
  if isinstance(outputs, dict):
    if "heatmaps" not in outputs:
      raise KeyError(f"Model outputs {sorted(outputs)} have no 'heatmaps'.")
    return outputs["heatmaps"]
  return outputs


def check_fh1_method(fh1_method, seg_classes):
  """Raises ValueError unless `fh1_method` is known and usable with `seg_classes`."""
  if fh1_method not in FH1_METHODS:
    raise ValueError(f"Unknown fh1_method {fh1_method!r}; expected one of {FH1_METHODS}.")
  if fh1_method == "tangent" and seg_classes <= tangent.HEAD_CLASS:
    raise ValueError("fh1_method 'tangent' needs a segmentation head with the fetal-head class "
                     f"(seg_classes=3); this model has seg_classes={seg_classes}.")


def decode_outputs(outputs, image_size_px, method="dark", blur_sigma_cells=0.0,
                   fh1_method="heatmap"):
  """Decodes a batch of model outputs.

  Args:
    outputs: the model's output dict (`heatmaps` [B,R,R,3], and `segmentation` [B,R,R,C]
      probabilities for `fh1_method="tangent"`), or a heatmap tensor.
    image_size_px: [B, 2] or [2] `(width, height)` of each original image, pixels.
    method, blur_sigma_cells: peak decoding (`heatmap.decode_heatmaps`).
    fh1_method: one of `FH1_METHODS`; "tangent" keeps the heatmap FH1 where no head is found.

  Returns:
    landmarks float32 [B,3,2] original pixels, aop_deg float32 [B] (NaN where degenerate),
    confidence float32 [B,3] (heatmap peak heights).
  """
  maps = tf.cast(heatmaps_of(outputs), tf.float32)
  landmarks, aop, confidence = heatmap.decode_landmarks(maps, image_size_px, method,
                                                        blur_sigma_cells)
  if fh1_method == "heatmap":
    return landmarks, aop, confidence
  if fh1_method != "tangent":
    raise ValueError(f"Unknown fh1_method {fh1_method!r}; expected one of {FH1_METHODS}.")
  if not isinstance(outputs, dict) or "segmentation" not in outputs:
    raise ValueError("fh1_method 'tangent' needs the model's 'segmentation' output.")
  seg = tf.cast(outputs["segmentation"], tf.float32)
  head = seg[..., tangent.HEAD_CLASS:tangent.HEAD_CLASS + 1]
  shape = tf.shape(head)
  head = tf.image.resize(head, tf.stack([shape[1], shape[2]]) * TANGENT_UPSAMPLE,
                         method="bilinear")[..., 0]
  size = tf.cast(tf.convert_to_tensor(image_size_px), tf.float32)
  if len(size.shape) == 1:
    size = tf.broadcast_to(size[None], [tf.shape(maps)[0], 2])
  fh1, found = tangent.tangent_point(landmarks[:, 0], landmarks[:, 1], head, size)
  fh1 = tf.where(found[:, None], fh1, landmarks[:, 2])
  landmarks = tf.stack([landmarks[:, 0], landmarks[:, 1], fh1], axis=1)
  return landmarks, geometry.aop_deg(landmarks), confidence
