"""aop_tf.io.parallel.ordered_map: order, errors where they belong, a bounded window."""

import threading
import time

import pytest

from aop_tf.io import parallel


@pytest.mark.parametrize("workers", [1, 4])
def test_results_come_in_input_order(workers):
  def slow_for_small(i):
    time.sleep(0.002 * (10 - i % 10))
    return i * i
  assert list(parallel.ordered_map(slow_for_small, range(40), workers)) == [
      i * i for i in range(40)]


def test_an_error_is_raised_where_its_result_would_be():
  def fail_at_three(i):
    if i == 3:
      raise ValueError("three")
    return i
  results = parallel.ordered_map(fail_at_three, range(10), workers=3)
  assert [next(results) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match="three"):
    next(results)


def test_at_most_a_window_of_results_is_pending():
  started, lock = [], threading.Lock()
  def record(i):
    with lock:
      started.append(i)
    return i
  results = parallel.ordered_map(record, iter(range(1000)), workers=2, window=5)
  next(results)
  time.sleep(0.05)
  assert len(started) <= 6  # the one yielded and at most a window behind it
  assert sum(results) == sum(range(1, 1000))


def test_runs_on_several_threads():
  names = set()
  def where(_):
    time.sleep(0.01)
    names.add(threading.current_thread().name)
  list(parallel.ordered_map(where, range(16), workers=4))
  assert len(names) > 1
