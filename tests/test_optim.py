"""The learning-rate schedules (aop_tf/optim.py)."""

import keras
import numpy as np
import pytest

from aop_tf import config
from aop_tf import optim


def test_paper_step_schedule_and_warmup():
  def lr(epoch, **kw):
    return optim.learning_rate_at(epoch * 10, 10, 1e-4, **kw)
  assert lr(0) == lr(14) == pytest.approx(1e-4)
  assert lr(15) == lr(29) == pytest.approx(5e-5)
  assert lr(30) == pytest.approx(2.5e-5)
  assert lr(149) == pytest.approx(1e-4 * 0.5 ** 9)
  assert lr(0, schedule="cosine", epochs=10) == pytest.approx(1e-4)
  assert lr(5, schedule="cosine", epochs=10) == pytest.approx(5e-5)
  assert lr(0, schedule="constant", warmup_epochs=1) == pytest.approx(1e-5)
  assert lr(1, schedule="constant", warmup_epochs=1) == pytest.approx(1e-4)


def test_clip_norm_clips_each_gradient():
  def trajectory(clip_norm, grads):
    spec = config.RunSpec().replace(learning_rate=0.1, weight_decay=0.0, clip_norm=clip_norm)
    opt = optim.make_optimizer(spec.optim)
    var = keras.Variable(np.zeros(2, np.float32))
    for g in grads:
      opt.apply_gradients([(np.asarray(g, np.float32), var)])
    return var.numpy()

  # Clipped to norm 1, a 100x gradient then a unit one train like two unit gradients.
  np.testing.assert_allclose(trajectory(1.0, [[60, 80], [0.6, 0.8]]),
                             trajectory(0.0, [[0.6, 0.8], [0.6, 0.8]]), rtol=1e-6)
  assert not np.allclose(trajectory(0.0, [[60, 80], [0.6, 0.8]]),
                         trajectory(0.0, [[0.6, 0.8], [0.6, 0.8]]), rtol=1e-3)
