"""The learning-rate schedules (aop_tf/optim.py)."""

import pytest

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
