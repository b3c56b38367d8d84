"""Ordered parallel map for reading inputs: decoding and encoding images on several cores.

OpenCV's and NumPy's image work releases the GIL, so threads spread it over the cores without
copying images between processes (and without forking a process that holds TensorFlow).
"""

import collections
import concurrent.futures
import os


def default_workers():
  """Threads for data preparation: the cores this process may use."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def ordered_map(fn, items, workers, window=None):
  """Yields `fn(item)` for each of `items`, in their order, computed on `workers` threads.

  At most `window` (default `workers`) results are pending at once, so memory stays bounded
  however long `items` is (decoded images: a 100-megapixel one is 100 MB); `workers` <= 1 maps in
  this thread. An exception of `fn` is raised where its result would have been yielded.
  """
  if workers <= 1:
    yield from map(fn, items)
    return
  window = window or workers
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="aop_prep") as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
