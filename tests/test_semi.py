"""Semi-supervised training (aop_tf/semi.py, data.make_unlabeled_dataset): the teacher's landmarks
reach the student's view by the known transform, the EMA update, and exact resume."""

import os

import cv2
import keras
import numpy as np
import pytest

from aop_tf import config
from aop_tf import data
from aop_tf import model_dir as model_dir_lib
from aop_tf import semi
from aop_tf import train
from data_prep import build
from data_prep import phantom
import helpers

SIZE = 128


def _marked_images(folder, count):
  """Phantoms dimmed to <= 200 with one 255 cross each, on landmark i % 3; returns the crosses."""
  os.makedirs(folder, exist_ok=True)
  marks = []
  for i in range(count):
    ph = phantom.make_phantom(i, size=SIZE)
    image = (ph["image"].astype(np.float32) * (phantom.MARKER_VALUE - phantom.MARKER_GAP) / 255)
    x, y = np.rint(ph["landmarks"][i % 3]).astype(int)
    for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
      image[y + dy, x + dx] = phantom.MARKER_VALUE
    cv2.imwrite(str(folder / f"m{i}.png"), np.rint(image).astype(np.uint8))
    marks.append((x, y))
  return np.array(marks, np.float32)


def _marker(view):
  """Centroid `(x, y)` of the pixels brighter than the dimmed phantom can be (the warped cross)."""
  image = np.asarray(view)[..., 0]
  weight = np.clip(image - (phantom.MARKER_VALUE - phantom.MARKER_GAP + 5), 0, None)
  ys, xs = np.nonzero(weight)
  return np.array([np.average(xs, weights=weight[ys, xs]),
                   np.average(ys, weights=weight[ys, xs])], np.float32)


def test_the_students_target_is_the_teachers_landmark_moved_by_the_known_transform(tmp_path):
  marks = _marked_images(tmp_path / "images", 6)
  dataset = build.build_dataset("images", data_dir=str(tmp_path / "images"),
                                out_dir=str(tmp_path / "ds"), verbose=False)
  spec = helpers.tiny_spec(input_size=SIZE, heatmap_size=32, sigma_cells=1.5, augment=True,
                           aug_affine_prob=1.0, aug_rotation_deg=25, aug_scale_range=(0.8, 1.25),
                           aug_translate_frac=0.1, aug_intensity_prob=0.0, aug_erase_prob=0.0,
                           unlabeled_split="unlabeled", unlabeled_batch_size=6, cache=False)
  batch = next(iter(data.make_unlabeled_dataset(dataset, "unlabeled", spec)))
  weak = np.stack([_marker(v) for v in batch["weak"]])
  strong = np.stack([_marker(v) for v in batch["strong"]])
  assert np.abs(weak - marks).max() > 1.0 and np.abs(strong - marks).max() > 3.0  # views moved
  # A teacher that saw the cross in the weak view, for each of the three landmarks.
  codec = spec.heatmap_codec()
  outputs = codec.encode(np.repeat(weak[:, None], 3, axis=1), [SIZE, SIZE])
  model = semi.build(spec, steps_per_epoch=1)
  targets, keep, moved = model.targets_from(outputs, batch)
  # The student is taught where the cross is in its own view (to a fraction of a pixel).
  np.testing.assert_allclose(moved.numpy()[:, 0], strong, atol=0.6)
  decoded = codec.decode(codec.render(targets), [SIZE, SIZE])["landmarks"].numpy()
  np.testing.assert_allclose(decoded[:, 0], moved.numpy()[:, 0], atol=0.05)
  assert not keep.numpy().any()  # three coincident landmarks are no anatomy: all dropped


def test_ema_update_follows_the_student_every_weight():
  spec = helpers.tiny_spec(unlabeled_split="unlabeled", ema_decay=0.9)
  model = semi.build(spec, steps_per_epoch=1)
  model.compile(optimizer=keras.optimizers.Adam())
  model.optimizer.build(model.trainable_variables)
  model.optimizer.iterations.assign(1000)  # past the warm-up: the decay is ema_decay itself
  model.student.set_weights([np.ones_like(w) for w in model.student.get_weights()])
  model.teacher.set_weights([np.zeros_like(w) for w in model.teacher.get_weights()])
  model.update_teacher()
  for weight in model.teacher.weights:  # batch-norm moving statistics included
    np.testing.assert_allclose(weight.numpy(), 0.1, rtol=1e-6)
  model.optimizer.iterations.assign(0)  # early: (1 + 0) / (10 + 0) = 0.1, the student mostly
  model.update_teacher()
  np.testing.assert_allclose(model.teacher.weights[0].numpy(), 0.1 * 0.1 + 0.9, rtol=1e-6)
  assert semi.ramp_weight(0, 10, 2.0).numpy() == pytest.approx(2.0 * np.exp(-5.0))
  assert semi.ramp_weight(10, 10, 2.0).numpy() == pytest.approx(2.0)


def test_a_semi_supervised_run_resumes_exactly(tmp_path):
  keep = tmp_path / "keep.txt"
  keep.write_text("\n".join(f"phantom_{i:07d}.png" for i in range(8)) + "\n")
  dataset = build.build_dataset("phantom", out_dir=str(tmp_path / "ds"), phantom_size=64,
                                phantom_counts={"train": 14, "val": 2}, labeled_list=str(keep),
                                verbose=False)
  spec = helpers.train_spec(dataset, tmp_path / "whole", epochs=2, augment=True, num_tb_images=0,
                            unlabeled_split="unlabeled", unlabeled_batch_size=2, rampup_epochs=1,
                            pseudo_min_confidence=0.0, pseudo_head_side=False,
                            pseudo_ps_length_512=(1, 1e4), pseudo_aop_range_deg=(1e-3, 180))
  whole = train.train(spec)
  assert min(whole.history["pseudo_kept"]) > 0  # the unlabeled loss did train the student
  stopped = train.train(spec.replace(model_dir=str(tmp_path / "cut")),
                        extra_callbacks=[helpers.SignalAt(epoch=1, batch=0)])
  assert (stopped.stop_reason, stopped.steps_into_epoch) == ("signal", 1)
  resumed = train.train(spec.replace(model_dir=str(tmp_path / "cut")))
  assert resumed.epochs_done == 2
  np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-5)
  ours = model_dir_lib.load_keras_file(model_dir_lib.checkpoint_path(str(tmp_path / "cut"),
                                                                     "latest"))
  ref = model_dir_lib.load_keras_file(model_dir_lib.checkpoint_path(str(tmp_path / "whole"),
                                                                    "latest"))
  assert isinstance(ours, semi.MeanTeacher)
  for a, b in zip(ours.get_weights(), ref.get_weights()):  # student and teacher
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Evaluation and export get one float network: the teacher.
  network, loaded = model_dir_lib.load_model(str(tmp_path / "cut"))
  assert network.name == "teacher" and loaded.semi.unlabeled_split == "unlabeled"


def test_a_missing_unlabeled_split_is_a_clear_error(phantom_dir, tmp_path):
  spec = helpers.train_spec(phantom_dir, tmp_path / "run", unlabeled_split="unlabeled")
  with pytest.raises(config.ConfigError, match="--unlabeled_split='unlabeled'.*--labeled_list"):
    train.train(spec)


@pytest.mark.parametrize("landmarks, fh1_counts", [("all", True), ("symphysis", False)])
def test_pseudo_landmarks_choose_which_teacher_landmarks_train(landmarks, fh1_counts):
  spec = helpers.tiny_spec(unlabeled_split="unlabeled", loss="softmax_ce",
                           pseudo_landmarks=landmarks)
  model = semi.build(spec, steps_per_epoch=1)
  cells = spec.model.heatmap_size
  rng = np.random.default_rng(0)
  targets = rng.uniform(2, cells - 3, (2, 3, 2)).astype(np.float32)
  maps = rng.uniform(0.1, 1.0, (2, cells, cells, 3)).astype(np.float32)
  moved = maps.copy()
  moved[..., 2] = np.roll(moved[..., 2], 5, axis=1)  # only the FH1 heatmap changes
  base = model.unlabeled_per_image(targets, maps).numpy()
  other = model.unlabeled_per_image(targets, moved).numpy()
  assert np.all(np.isfinite(base))
  assert (not np.allclose(base, other)) == fh1_counts
