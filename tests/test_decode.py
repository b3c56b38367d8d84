"""decode.decode_outputs: the one decoder of model outputs."""

import numpy as np
import pytest

from aop_tf import decode
from aop_tf import geometry
from aop_tf import heatmap


def _outputs(points_px, size=256, cells=64, head=None):
  points_cells = geometry.pixel_to_cell(np.asarray(points_px, np.float32), [size, size],
                                        [cells, cells])
  outputs = {"heatmaps": heatmap.gaussian_heatmaps(points_cells, (cells, cells), 2.0)}
  if head is not None:
    seg = np.zeros((len(head), cells, cells, 3), np.float32)
    seg[..., 2] = head
    seg[..., 0] = 1.0 - head
    outputs["segmentation"] = seg
  return outputs


def test_heatmap_method_is_the_heatmap_decoder():
  points = [[[140.2, 30.7], [70.1, 44.9], [190.6, 80.3]]]
  outputs = _outputs(points)
  got = decode.decode_outputs(outputs, [[256, 256]], "dark", 1.0)
  want = heatmap.decode_landmarks(outputs["heatmaps"], [[256, 256]], "dark", 1.0)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b)
  # A bare heatmap tensor is accepted too.
  np.testing.assert_allclose(decode.decode_outputs(outputs["heatmaps"], [256, 256])[0], got[0],
                             atol=1e-4)


def test_tangent_method_moves_fh1_to_the_head_tangent():
  # A disc of head at 64 cells over 256 px; FH1's heatmap deliberately far off the tangent.
  ys, xs = np.mgrid[0:64, 0:64]
  head = (((xs - 45) ** 2 + (ys - 35) ** 2) <= 10 ** 2).astype(np.float32)[None]
  points = [[[140.0, 30.0], [70.0, 44.0], [230.0, 230.0]]]
  outputs = _outputs(points, head=head)
  landmarks, aop, _ = decode.decode_outputs(outputs, [[256, 256]], "dark", 0.0, "tangent")
  landmarks = landmarks.numpy()
  np.testing.assert_allclose(landmarks[0, :2], np.asarray(points[0][:2]), atol=0.05)
  # FH1 is now on the disc's rim (centre (45.5*4-.5, 35.5*4-.5) px, radius ~40 px), and the AoP
  # is the largest angle over the disc.
  centre = np.array([181.5, 141.5])
  assert np.hypot(*(landmarks[0, 2] - centre)) == pytest.approx(40.0, abs=4.0)
  rim = centre + 40.0 * np.stack([np.cos(np.linspace(0, 2 * np.pi, 720)),
                                  np.sin(np.linspace(0, 2 * np.pi, 720))], axis=-1)
  best = geometry.angle_deg(landmarks[0, 0], landmarks[0, 1], rim).numpy().max()
  assert float(aop[0]) == pytest.approx(best, abs=1.5)
  assert float(aop[0]) == pytest.approx(float(geometry.aop_deg(landmarks[0])), abs=1e-4)


def test_tangent_keeps_heatmap_fh1_without_head_and_needs_segmentation():
  points = [[[140.0, 30.0], [70.0, 44.0], [190.0, 80.0]]]
  outputs = _outputs(points, head=np.zeros((1, 64, 64), np.float32))
  landmarks, _, _ = decode.decode_outputs(outputs, [[256, 256]], "dark", 0.0, "tangent")
  np.testing.assert_allclose(landmarks[0, 2], points[0][2], atol=0.05)
  with pytest.raises(ValueError, match="segmentation"):
    decode.decode_outputs({"heatmaps": outputs["heatmaps"]}, [[256, 256]], fh1_method="tangent")
  with pytest.raises(ValueError, match="fh1_method"):
    decode.check_fh1_method("nearest", 3)
  with pytest.raises(ValueError, match="seg_classes=3"):
    decode.check_fh1_method("tangent", 0)
