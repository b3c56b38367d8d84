"""`python -m aop_tf.viewer` as a user starts it: the printed address, --host, and a kill -9 in
the middle of saving that loses no saved row."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np

from aop_tf.io import labels as iugc_labels
from aop_tf.viewer import labels as labels_lib
import clip_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "psfhs")


class Process:
  """A viewer started as `python -m aop_tf.viewer ARGS`; `url`, `port`, `token` once it printed
  its address; `request(method, path, body)` -> (status, JSON)."""

  def __init__(self, *args, host="127.0.0.1"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    self.started = time.perf_counter()
    self.proc = subprocess.Popen([sys.executable, "-m", "aop_tf.viewer", "--port=0", *args],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    self.lines = []
    for line in self.proc.stdout:
      self.lines.append(line)
      match = re.search(r"open (http://\S+)", line)
      if match:
        self.url = match.group(1)
        break
    else:
      raise AssertionError(f"no address printed: {self.lines} {self.proc.stderr.read()}")
    self.host = host
    self.port = int(re.search(r":(\d+)/", self.url).group(1))
    self.token = self.url.split("token=")[1]

  def request(self, method, path, body=None, timeout=120):
    conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, data, {"X-Token": self.token, "Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read() or b"null")
    conn.close()
    return response.status, payload

  def wait_ready(self, timeout=120):
    """Waits until the model is loaded and the inputs are open."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      _, session = self.request("GET", "/api/session")
      if session["model"]["state"] == "ready" and not session["opening"]:
        return session
      time.sleep(0.2)
    raise AssertionError("the viewer did not get ready")

  def stop(self):
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGINT)
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    return self.proc.stderr.read()


def test_the_command_prints_its_address_and_answers(tmp_path):
  viewer = Process(f"--inputs={EXAMPLES}/04066.png", f"--labels={tmp_path / 'c.csv'}")
  try:
    assert viewer.url.startswith("http://127.0.0.1:")
    status, session = viewer.request("GET", "/api/session")
    assert status == 200 and session["labels"]["path"] == str(tmp_path / "c.csv")
    first_answer_s = time.perf_counter() - viewer.started
    session = viewer.wait_ready()
    assert [item["name"] for item in session["items"]] == ["04066.png"]
  finally:
    stderr = viewer.stop()
  assert first_answer_s < 30, first_answer_s
  assert "[viewer] WARNING" not in stderr and "viewer: error" not in stderr


def test_another_host_is_allowed_with_a_warning(tmp_path):
  viewer = Process("--host=127.0.0.2", f"--labels={tmp_path / 'c.csv'}", host="127.0.0.2")
  try:
    assert viewer.url.startswith("http://127.0.0.2:")
    assert viewer.request("GET", "/api/session")[0] == 200
  finally:
    stderr = viewer.stop()
  assert "WARNING: --host=127.0.0.2" in stderr


def _save_until_killed(viewer, item, acknowledged, stop):
  """Saves frame after frame (each a new row) until the server dies; records each answered."""
  frame = 0
  while not stop.is_set():
    points = [[100.0 + frame, 40.5], [60.25, 60.0], [160.0, 50.0 + frame / 8]]
    try:
      status, label = viewer.request("POST", "/api/labels", {"item": item, "frame": frame % 40,
                                                             "landmarks": points}, timeout=30)
    except (OSError, http.client.HTTPException):
      return
    if status == 200:
      acknowledged[(label["source"], label["frame"])] = label
    frame += 1


def _check_csv(csv_path, acknowledged):
  """Every acknowledged save is in the CSV with its points; the CSV parses whole, for us and for
  data_prep's reader; every image it names exists."""
  saved = {(l.source, l.frame): l for l in labels_lib.read_labels(csv_path)}
  for key, label in acknowledged.items():
    assert key in saved, key
    np.testing.assert_allclose(saved[key].landmarks, label["landmarks"], atol=1e-3)
  rows = iugc_labels.read_rows(csv_path)
  assert len(rows) == len(saved) and all(r.error is None for r in rows)
  folder = os.path.dirname(csv_path)
  for label in saved.values():
    assert cv2.imread(os.path.join(folder, label.filename)) is not None, label.filename
  return saved


def test_a_kill_during_saves_loses_no_saved_row(tmp_path):
  frames = [cv2.imread(os.path.join(EXAMPLES, n), cv2.IMREAD_GRAYSCALE)
            for n in sorted(os.listdir(EXAMPLES)) if n.endswith(".png")]
  clip = str(tmp_path / "clip.avi")
  clip_files.write_video(clip, (frames[i % len(frames)] for i in range(40)), fps=10)
  csv_path = str(tmp_path / "labels" / "corrections.csv")
  acknowledged = {}
  for cycle in range(2):
    viewer = Process(f"--inputs={clip}", f"--labels={csv_path}")
    session = viewer.wait_ready()
    on_disk = labels_lib.read_labels(csv_path) if os.path.exists(csv_path) else []
    assert session["labels"]["count"] == len(on_disk) >= len(acknowledged)  # resumed
    leftovers = [n for n in os.listdir(os.path.dirname(csv_path)) if ".tmp-" in n]
    assert not leftovers, leftovers  # a killed save's temporary file is gone
    stop = threading.Event()
    saver = threading.Thread(target=_save_until_killed,
                             args=(viewer, session["items"][0]["id"], acknowledged, stop))
    before = len(acknowledged)
    saver.start()
    while len(acknowledged) < before + 5 + 3 * cycle:
      time.sleep(0.01)
    time.sleep(0.013 * (cycle + 1))  # somewhere inside a save
    viewer.proc.send_signal(signal.SIGKILL)
    viewer.proc.wait()
    stop.set()
    saver.join()
    viewer.proc.stdout.close()
    viewer.proc.stderr.close()
    _check_csv(csv_path, acknowledged)
