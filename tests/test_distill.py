"""Distillation (aop_tf/distill.py) and fine-tuning (--init_from): targets that follow the view,
blending, the teacher's maps kept per run, and weights taken over exactly or refused."""

import math
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from aop_tf import augment
from aop_tf import config
from aop_tf import distill
from aop_tf import heatmap
from aop_tf import model_dir as model_dir_lib
from aop_tf import train
import helpers

SIZE, CELLS = 64, 16


def _teacher_map(points_cells, sigma=1.0):
  return heatmap.gaussian_heatmaps(tf.constant(points_cells, tf.float32), (CELLS, CELLS), sigma)


def test_warped_teacher_map_lands_on_the_warped_landmarks():
  """A teacher map peaked at the landmarks, moved with a view's matrix, peaks where the same
  matrix moves the landmarks (the target stays on the anatomy)."""
  cells = np.array([[8.0, 5.0], [4.0, 6.0], [9.5, 10.0]], np.float32)
  maps = _teacher_map(cells)
  spec = config.AugmentSpec(affine_prob=1.0, rotation_deg=20.0, scale_range=(0.9, 1.1),
                            translate_frac=0.05, keep_landmarks_inside=False, max_tries=1)
  for seed in range(5):
    forward = augment.random_affine(tf.constant([seed, 7]), spec, (SIZE, SIZE))
    warped = distill.warp_to_view(maps, forward, SIZE, CELLS)
    px = (cells + 0.5) * SIZE / CELLS - 0.5
    moved = augment.transform_points(px, forward).numpy()
    want = (moved + 0.5) * CELLS / SIZE - 0.5
    got = heatmap.soft_argmax(warped[None] / tf.reduce_sum(warped, [0, 1]))[0].numpy()
    np.testing.assert_allclose(got, want, atol=0.15)


def test_blend_normalises_and_falls_back_to_the_label():
  label = _teacher_map(np.array([[4.0, 4.0]] * 3, np.float32))
  teacher = 5.0 * _teacher_map(np.array([[10.0, 10.0]] * 3, np.float32))
  mixed = distill.blend(teacher, label, 0.25).numpy()
  np.testing.assert_allclose(mixed.sum(axis=(0, 1)), 1.0, atol=1e-5)
  np.testing.assert_allclose(mixed[10, 10], 0.25 * teacher.numpy()[10, 10] /
                             teacher.numpy()[..., 0].sum(), rtol=1e-3)
  alone = distill.blend(tf.zeros_like(teacher), label, 0.75).numpy()  # warped off the view
  np.testing.assert_allclose(alone, label.numpy() / label.numpy()[..., 0].sum(), atol=1e-6)


def test_teacher_maps_by_file_name_and_kept_per_run(tmp_path):
  maps = np.random.default_rng(0).random((3, CELLS, CELLS, 3)).astype(np.float32)
  table = distill.TeacherMaps(["a.png", "b.png", "c.png"], maps)
  np.testing.assert_allclose(table.get(tf.constant("b.png")).numpy(), maps[1], rtol=1e-3)
  assert float(tf.reduce_sum(table.get(tf.constant("missing.png")))) == 0.0
  calls = []

  def compute():
    calls.append(1)
    return table

  first = distill.cached_teacher_maps(str(tmp_path), "psfhs", compute)
  again = distill.cached_teacher_maps(str(tmp_path), "psfhs", compute)
  assert len(calls) == 1 and list(again.filenames) == list(first.filenames)
  with pytest.raises(ValueError, match="not --teacher=other"):
    distill.cached_teacher_maps(str(tmp_path), "other", compute)


def test_teacher_needs_a_distribution_loss():
  with pytest.raises(config.ConfigError, match="--teacher needs --loss"):
    config.RunSpec().replace(teacher="psfhs", loss="mse")


def _spec(data_dir, model_dir, **flags):
  # Group norm: no batch statistics drift while a learning rate of 0 keeps the weights.
  return helpers.train_spec(data_dir, model_dir, norm="group", loss="softmax_ce",
                            heatmap_scale=1.0, **flags)


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
  """A 2-epoch phantom run: the teacher and the weights to start from."""
  folder = tmp_path_factory.mktemp("runs") / "base"
  train.train(_spec(phantom_dir, folder, epochs=2))
  return str(folder)


def test_init_from_starts_at_the_loaded_model(trained, phantom_dir, tmp_path):
  base = model_dir_lib.read_state(trained)["history"][-1]["val_loss"]
  result = train.train(_spec(phantom_dir, tmp_path / "tuned", epochs=1, learning_rate=1e-12,
                             warmup_epochs=0.0, init_from=trained))
  first = model_dir_lib.read_state(result.model_dir)["history"][0]["val_loss"]
  assert first == pytest.approx(base, rel=1e-5)
  fresh = train.train(_spec(phantom_dir, tmp_path / "fresh", epochs=1, learning_rate=1e-12,
                            warmup_epochs=0.0))
  assert model_dir_lib.read_state(fresh.model_dir)["history"][0]["val_loss"] != pytest.approx(
      base, rel=1e-3)


def test_init_from_refuses_another_architecture(trained, phantom_dir, tmp_path):
  with pytest.raises(config.ConfigError, match=r"architecture does not match") as caught:
    train.train(_spec(phantom_dir, tmp_path / "wide", base_filters=8, init_from=trained))
  assert "\n" not in str(caught.value)
  with pytest.raises(FileNotFoundError, match="not a shipped model"):
    train.train(_spec(phantom_dir, tmp_path / "none", init_from=str(tmp_path / "nothing")))


def test_distilled_run_learns_from_the_teacher_maps(trained, phantom_dir, tmp_path):
  result = train.train(_spec(phantom_dir, tmp_path / "student", epochs=1, teacher=trained,
                             teacher_weight=0.7))
  saved, teacher = distill.TeacherMaps.load(str(tmp_path / "student" / distill.TEACHER_MAPS_FILE))
  assert teacher == trained and len(saved.filenames) == 8 and saved.cells == CELLS
  loss = model_dir_lib.read_state(result.model_dir)["history"][0]["loss"]
  assert math.isfinite(loss)


def test_init_from_the_shipped_psfhs_takes_its_float_weights():
  """`--init_from=psfhs`: a network of the shipped model's run spec takes its `weights.keras`, and
  the float network's landmarks agree with the shipped int8 file's."""
  from aop_tf import model as model_lib  # pylint: disable=import-outside-toplevel
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  from aop_tf import predictor_tf  # pylint: disable=import-outside-toplevel
  from aop_tf import zoo  # pylint: disable=import-outside-toplevel
  folder = zoo.resolve("psfhs")
  if folder is None or not os.path.isfile(os.path.join(folder, model_dir_lib.WEIGHTS_FILE)):
    pytest.skip("no shipped psfhs weights (python -m aop_tf.zoo --members=<one run> ships them)")
  spec = predictor.export_spec(folder)
  network = model_lib.build_unet(**spec.model_kwargs())
  where = model_dir_lib.init_from(network, "psfhs", folder)
  assert where.endswith(model_dir_lib.WEIGHTS_FILE)
  image = cv2.imread(os.path.join(helpers.REPO, "examples", "psfhs", "04066.png"),
                     cv2.IMREAD_GRAYSCALE)
  shipped = predictor.load("psfhs").predict([image[..., None]])
  keras_out = predictor_tf.KerasPredictor(network, spec.heatmap_codec()).predict(
      [image[..., None]])
  np.testing.assert_allclose(keras_out["landmarks"], shipped["landmarks"], atol=2.0)
