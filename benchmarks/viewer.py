"""Speed of the viewer as a person meets it: start-up, and dropping an image until its landmarks
are drawn, in headless Chromium.

  python -m benchmarks.viewer [--model=psfhs] [--repeats=20] [--out=benchmarks/results/viewer.json]

Start-up: `python -m aop_tf.viewer` started afresh `--starts` times; the time from launching the
process to the first answer of `GET /api/session` (goal <= 3 s), to the model being loaded, and to
the first result of an image given with --inputs. Drop: a 512x512 PNG (a PSFHS example image
scaled up, one pixel changed per drop so that every drop is a new image) dropped on the page
`--repeats` times after one warm-up drop; the time from the drop event to the 'aop:drawn' event the
page fires once the frame and its landmarks are on the canvas (upload, decode, model, PNG of the
frame back, drawing), median of the repeats (goal <= 300 ms with the shipped model). The load
average before and after is recorded: the CPU may be shared.
"""

import base64
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from absl import app
from absl import flags
import cv2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO_ROOT, "examples", "psfhs", "04066.png")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking",
                 "--disable-gpu", "--disable-component-update", "--no-first-run"]
GOALS = {"first_answer_s": 3.0, "drop_to_drawn_median_ms": 300.0}

flags.DEFINE_string("model", "psfhs", "The viewer's --model.")
flags.DEFINE_integer("repeats", 20, "Timed drops (after one warm-up drop).")
flags.DEFINE_integer("starts", 3, "Fresh start-ups timed.")
flags.DEFINE_integer("size", 512, "Side of the dropped image, pixels.")
flags.DEFINE_string("out", os.path.join(REPO_ROOT, "benchmarks", "results", "viewer.json"),
                    "JSON written here.")
FLAGS = flags.FLAGS


class Viewer:
  """`python -m aop_tf.viewer` in a subprocess; `url`, `token`, `get(path)` -> JSON or None."""

  def __init__(self, folder, inputs=()):
    self.launched = time.perf_counter()
    args = [sys.executable, "-m", "aop_tf.viewer", f"--model={FLAGS.model}", "--port=0",
            f"--labels={os.path.join(folder, 'corrections.csv')}"]
    args += [f"--inputs={path}" for path in inputs]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    self.proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
    for line in self.proc.stdout:
      match = re.search(r"open (http://\S+)", line)
      if match:
        self.url = match.group(1)
        break
    else:
      raise RuntimeError("the viewer printed no address")
    self.base = self.url.split("/?")[0]
    self.token = self.url.split("token=")[1]

  def get(self, path, timeout=300):
    request = urllib.request.Request(self.base + path, headers={"X-Token": self.token})
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
      return None

  def wait(self, predicate, poll_s=0.005):
    """Seconds from launch until `predicate(session)` holds."""
    while True:
      session = self.get("/api/session")
      if session is not None and predicate(session):
        return time.perf_counter() - self.launched
      time.sleep(poll_s)

  def stop(self):
    self.proc.terminate()
    self.proc.wait(timeout=30)


def time_start_up(folder, image):
  """One fresh start: seconds to the first answer, to the model loaded, to the first result."""
  viewer = Viewer(folder, [image])
  try:
    first = viewer.wait(lambda s: True)
    ready = viewer.wait(lambda s: s["model"]["state"] == "ready")
    items = []
    while not items:
      items = viewer.get("/api/items") or []
    viewer.get(f"/api/items/{items[0]['id']}/frames/0")
    first_result = time.perf_counter() - viewer.launched
  finally:
    viewer.stop()
  return {"first_answer_s": first, "model_ready_s": ready, "first_result_s": first_result}


DROP_JS = """async ([name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: 'image/png'}));
  const drawn = new Promise((resolve) => window.addEventListener(
      'aop:drawn', () => resolve(performance.now()), {once: true}));
  const start = performance.now();
  document.getElementById('view').dispatchEvent(
      new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  return (await drawn) - start;
}"""


def drop_images(count):
  """`count` different 512x512 PNGs (base64): the example scaled up, one pixel changed each."""
  image = cv2.resize(cv2.imread(EXAMPLE, cv2.IMREAD_GRAYSCALE), (FLAGS.size, FLAGS.size),
                     interpolation=cv2.INTER_CUBIC)
  encoded = []
  for i in range(count):
    image[0, 0] = i % 256
    image[0, 1] = i // 256
    encoded.append(base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode())
  return encoded


def time_drops(folder):
  """Milliseconds from drop to landmarks drawn: the warm-up drop and the timed ones."""
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  viewer = Viewer(folder)
  try:
    viewer.wait(lambda s: s["model"]["state"] == "ready")
    images = drop_images(FLAGS.repeats + 1)
    with sync_playwright() as playwright:
      browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                           args=CHROMIUM_ARGS)
      page = browser.new_page(viewport={"width": 1280, "height": 800})
      page.goto(viewer.url)
      page.evaluate("viewer.ready")
      times = [page.evaluate(DROP_JS, [f"scan_{i:02d}.png", data])
               for i, data in enumerate(images)]
      browser.close()
  finally:
    viewer.stop()
  return times[0], times[1:]


def main(argv):
  del argv
  if not shutil.which("chromium"):
    raise SystemExit("benchmarks.viewer needs Debian's chromium (apt-get install chromium)")
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as folder:
    image = os.path.join(folder, "scan.png")
    cv2.imwrite(image, cv2.resize(cv2.imread(EXAMPLE, 0), (FLAGS.size, FLAGS.size)))
    starts = [time_start_up(os.path.join(folder, f"start{i}"), image)
              for i in range(FLAGS.starts)]
    first_drop, drops = time_drops(os.path.join(folder, "drops"))
  startup = {key: statistics.median(s[key] for s in starts) for key in starts[0]}
  result = {
      "command": "python -m benchmarks.viewer " + " ".join(
          f"--{k}={getattr(FLAGS, k)}" for k in ("model", "repeats", "starts", "size")),
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "load_average_before": load_before, "load_average_after": os.getloadavg()},
      "startup_median": startup, "startup_runs": starts,
      "drop_to_drawn_ms": {"median": statistics.median(drops),
                           "p90": sorted(drops)[int(0.9 * (len(drops) - 1))],
                           "min": min(drops), "max": max(drops), "first_drop": first_drop,
                           "all": drops},
      "goals": GOALS,
      "met": {"first_answer_s": startup["first_answer_s"] <= GOALS["first_answer_s"],
              "drop_to_drawn_median_ms": statistics.median(drops) <=
                                         GOALS["drop_to_drawn_median_ms"]}}
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(json.dumps({k: result[k] for k in ("startup_median", "drop_to_drawn_ms", "met")},
                   indent=2))


if __name__ == "__main__":
  app.run(main)
