"""The viewer in a real browser (headless Chromium), used as a person uses it: open an image, see
the model's landmarks and AoP, drag FH1, accept, restart and find the work again, open a clip and
walk its AoP over time. Every request the page makes is recorded: none may leave 127.0.0.1.
"""

import base64
import csv
import math
import os
import shutil

import cv2
import numpy as np
import pytest

from aop_tf import LANDMARK_NAMES
from aop_tf import geometry
from aop_tf.io import points as points_lib
from aop_tf.viewer import server
from browser import browser  # pylint: disable=unused-import
import clip_files
import dicom_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "psfhs")
EXAMPLE = os.path.join(EXAMPLES, "04066.png")
COLORS = {"PS1": (0xff, 0x5a, 0x5f), "PS2": (0xff, 0xb0, 0x20), "FH1": (0x35, 0xd0, 0xff)}
SCREENSHOT = os.path.join(REPO, "docs", "viewer.png")


class Session:
  """One viewer (restartable on the same corrections CSV) and one browser page on it; every
  request the page makes goes to `requests`."""

  def __init__(self, browser_, labels):
    self.labels = labels
    self.requests = []
    self.viewer = None
    self.page = browser_.new_page(viewport={"width": 1280, "height": 800})
    self.page.on("request", lambda request: self.requests.append(request.url))

  def start(self, inputs=()):
    """(Re)starts the viewer and opens the printed address in the page."""
    if self.viewer is not None:
      self.viewer.stop()
    self.viewer = server.Viewer("psfhs", list(inputs), self.labels).start()
    self.page.goto(self.viewer.url)
    self.page.evaluate("viewer.ready")

  def close(self):
    self.page.close()
    if self.viewer is not None:
      self.viewer.stop()


@pytest.fixture(scope="module")
def session(browser, tmp_path_factory):  # pylint: disable=redefined-outer-name
  s = Session(browser, str(tmp_path_factory.mktemp("labels") / "corrections.csv"))
  s.start()
  yield s
  s.close()


# ---------------------------------------------------------------------------------------------
# What a person does, in words.

def open_file(page, path):
  """Chooses a file with the page's Open… picker; waits until its landmarks are drawn."""
  before = page.evaluate("viewer.state.drawnKeys.size")
  page.set_input_files("#picker", path)
  wait_drawn(page, before)


def drop_file(page, path):
  """Drops a file on the image area, as from a file manager; waits until it is drawn."""
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
  before = page.evaluate("viewer.state.drawnKeys.size")
  page.evaluate("""([name, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name));
    document.getElementById('view').dispatchEvent(
        new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
  }""", [os.path.basename(path), data])
  wait_drawn(page, before)


def wait_drawn(page, before):
  page.wait_for_function(f"() => viewer.state.drawnKeys.size > {before}", timeout=120_000)


def landmarks_shown(page):
  """The landmarks of the frame shown, [[x, y] x 3] image pixels."""
  return page.evaluate("viewer.currentEntry().points")


def aop_shown(page):
  """The AoP the page prints, e.g. 127.6."""
  text = page.text_content("#aop")
  assert text.startswith("AoP ") and text.endswith("°"), text
  return float(text[4:-1])


def table_shown(page):
  """The landmark table as text rows: [[name, x, y, peak], ...]."""
  return page.eval_on_selector_all("#points tbody tr", "rows => rows.map(r => "
                                   "[...r.cells].map(c => c.textContent))")


def drag(page, landmark, dx, dy, check_midway=None):
  """Drags a landmark by (dx, dy) screen pixels with the mouse, in steps."""
  x, y = page.evaluate(f"viewer.screenOf({LANDMARK_NAMES.index(landmark)})")
  page.mouse.move(x, y)
  page.mouse.down()
  page.mouse.move(x + dx / 2, y + dy / 2, steps=4)
  if check_midway:
    check_midway()
  page.mouse.move(x + dx, y + dy, steps=4)
  page.mouse.up()


def canvas_color(page, landmark):
  """The RGB drawn on the canvas at a landmark's centre."""
  return tuple(page.evaluate(f"""() => {{
    const canvas = document.getElementById('view');
    const [x, y] = viewer.screenOf({LANDMARK_NAMES.index(landmark)});
    const rect = canvas.getBoundingClientRect();
    const dpr = canvas.width / rect.width;
    const px = canvas.getContext('2d').getImageData(
        Math.round((x - rect.left) * dpr), Math.round((y - rect.top) * dpr), 1, 1).data;
    return [px[0], px[1], px[2]];
  }}"""))


def predict_csv_row(entry_points, tmp_path, image):
  """What `python -m aop_tf.predict --model=psfhs` writes for one image."""
  output = str(tmp_path / "pred.csv")
  code, out, err = entry_points.run("aop_tf.predict", ["--model=psfhs", f"--inputs={image}",
                                                       f"--output={output}"])
  assert code == 0, (out, err)
  with open(output, newline="") as f:
    return next(csv.DictReader(f))


def interval_text(row):
  """What the page prints for a row's AoP and its 90 % range, e.g. `127.6° (90 %: 119–136)`
  (`quality.describe_interval`'s rounding)."""
  aop, low, high = (float(row[k]) for k in ("aop_deg", "aop_low_deg", "aop_high_deg"))
  assert math.isfinite(low) and math.isfinite(high), row  # the psfhs card has a quality fit
  return f"{aop:.1f}° (90 %: {low:.0f}–{high:.0f})"


def csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------

def test_the_page_aop_is_geometrys_on_1000_random_triples(session):
  rng = np.random.default_rng(26)
  triples = rng.uniform(-50, 600, (1000, 3, 2)).astype(np.float32)
  triples[:20, 1] = triples[:20, 0]  # PS2 on PS1: undefined
  triples[20:30] = np.round(triples[20:30])
  triples[30:40, 2] = triples[30:40, 0] + (triples[30:40, 1] - triples[30:40, 0]) * 2  # 0 deg
  page = session.page.evaluate("""async (triples) => {
    const {aopDeg} = await import('/static/aop.js');
    return triples.map((t) => { const a = aopDeg(t); return Number.isNaN(a) ? null : a; });
  }""", triples.astype(np.float64).tolist())
  page = np.array([np.nan if v is None else v for v in page])
  want = np.asarray(geometry.aop_deg(triples)).astype(np.float64)
  np.testing.assert_array_equal(np.isnan(page), np.isnan(want))
  ok = ~np.isnan(want)
  # geometry computes in float32 (TensorFlow), the page in float64: they agree to float32's
  # resolution (1.5e-5 deg at 180 deg) ...
  assert np.max(np.abs(page[ok] - want[ok])) <= 3e-5
  # ... and the page is geometry's formula, atan2(|cross|, dot), to 1e-6 deg in float64.
  t = triples.astype(np.float64)
  u, v = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
  exact = np.degrees(np.arctan2(np.abs(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]),
                                (u * v).sum(axis=1)))
  assert np.max(np.abs(page[ok] - exact[ok])) <= 1e-6


def test_open_an_example_image_shows_what_predict_writes(session, entry_points, tmp_path):
  want = predict_csv_row(entry_points, tmp_path, EXAMPLE)
  page = session.page
  open_file(page, EXAMPLE)
  got = landmarks_shown(page)
  for k, name in enumerate(LANDMARK_NAMES):
    assert got[k] == pytest.approx([float(want[f"{name}_x"]), float(want[f"{name}_y"])],
                                   abs=1e-3)
    assert canvas_color(page, name) == pytest.approx(COLORS[name], abs=40)
  assert aop_shown(page) == round(float(want["aop_deg"]), 1)
  assert [row[0] for row in table_shown(page)] == list(LANDMARK_NAMES)
  assert table_shown(page)[2][1] == f"{float(want['FH1_x']):.1f}"
  # The card's quality model: the model's AoP with its 90 % range, as predict writes it.
  assert page.text_content("#uncertainty") == interval_text(want)
  assert "for 9 of 10 images like this one" in page.text_content("#interval-note")
  flag = page.text_content("#flag")
  assert ("check this one" in flag) == (want["low_confidence"] in ("1", "True"))
  assert want["flag_reason"] in flag


def test_dragging_fh1_updates_the_aop_live(session):
  page = session.page
  before = aop_shown(page)
  midway = []
  drag(page, "FH1", 40, -25, check_midway=lambda: midway.append(aop_shown(page)))
  moved = landmarks_shown(page)
  assert midway[0] != before  # updated while the mouse was still down
  want = float(geometry.aop_deg(np.array(moved, np.float32)))
  assert aop_shown(page) == round(want, 1)
  assert page.evaluate("viewer.aopDeg(viewer.currentEntry().points)") == pytest.approx(
      want, abs=3e-5)
  assert "unsaved" in page.text_content("#saved-state")
  result = page.evaluate("viewer.currentEntry().result")
  assert page.text_content("#uncertainty") == f"corrected; the model said {interval_text(result)}"


def test_undo_and_redo_by_keyboard(session):
  page = session.page
  moved = landmarks_shown(page)
  drag(page, "PS2", -15, 10)
  assert landmarks_shown(page) != moved
  page.keyboard.press("u")
  assert landmarks_shown(page) == moved
  drag(page, "PS1", 5, 5)
  page.keyboard.press("Control+z")
  assert landmarks_shown(page) == moved


def test_accept_saves_the_row_to_the_csv(session):
  page = session.page
  moved = landmarks_shown(page)
  model_aop = page.evaluate("viewer.currentEntry().result.aop_deg")
  page.keyboard.press("a")
  page.wait_for_function(
      "() => document.getElementById('message').textContent.startsWith('saved')")
  rows = csv_rows(session.labels)
  assert len(rows) == 1
  row = rows[0]
  assert row["source"].endswith("/04066.png") and row["frame"] == "0"
  for k, name in enumerate(LANDMARK_NAMES):
    np.testing.assert_allclose(points_lib.parse_point(row[name]), moved[k], atol=1e-3)
  assert row["corrected"] == "1"
  assert float(row["model_aop_deg"]) == pytest.approx(model_aop, abs=1e-3)
  saved = cv2.imread(os.path.join(os.path.dirname(session.labels), row["Filename"]), 0)
  np.testing.assert_array_equal(saved, cv2.imread(EXAMPLE, 0))


def test_a_restart_resumes_where_it_stopped(session):
  saved = csv_rows(session.labels)[0]
  session.start()
  page = session.page
  assert "1 saved in" in page.text_content("#labels-file")
  drop_file(page, EXAMPLE)  # the same image again: its saved, corrected landmarks come back
  got = landmarks_shown(page)
  for k, name in enumerate(LANDMARK_NAMES):
    np.testing.assert_allclose(got[k], points_lib.parse_point(saved[name]), atol=1e-3)
  assert "saved (corrected)" in page.text_content("#saved-state")


def test_open_a_clip_plots_one_point_per_frame_and_a_click_goes_there(session, tmp_path):
  names = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".png"))
  frames = [cv2.imread(os.path.join(EXAMPLES, n), 0) for n in names]
  clip = str(tmp_path / "labour.avi")
  clip_files.write_video(clip, frames, fps=5)
  page = session.page
  open_file(page, clip)
  page.wait_for_function("() => viewer.state.plotPoints.length > 0", timeout=120_000)
  plotted = page.evaluate("viewer.state.plotPoints")
  assert [p["index"] for p in plotted] == list(range(len(frames)))
  rows = page.evaluate("viewer.state.timelines.get(viewer.state.itemId)")
  assert [p["flagged"] for p in plotted] == [r["low_confidence"] for r in rows]
  box = page.locator("#plot").bounding_box()
  before = page.evaluate("viewer.state.drawnKeys.size")
  page.mouse.click(box["x"] + plotted[3]["x"], box["y"] + plotted[3]["y"])
  wait_drawn(page, before)
  assert page.evaluate("viewer.state.frame") == 3
  assert aop_shown(page) == round(rows[3]["aop_deg"], 1)
  assert page.text_content("#name").endswith("frame 3")


def test_open_a_dicom_loop(session, tmp_path):
  frames = [cv2.imread(os.path.join(EXAMPLES, n), 0) for n in ("03758.png", "04391.png")]
  path = dicom_files.write_dicom(str(tmp_path / "loop.dcm"), frames, fps=10)
  page = session.page
  drop_file(page, path)
  page.wait_for_function("() => viewer.state.plotPoints.length === 2", timeout=120_000)
  assert page.evaluate("viewer.currentEntry().size") == [256, 256]


def test_the_review_queue_and_next_previous(session):
  page = session.page
  page.wait_for_function("() => viewer.state.queue.length >= 9", timeout=120_000)
  queue = page.evaluate("viewer.state.queue")
  names = page.eval_on_selector_all("#queue li", "items => items.map(i => i.textContent)")
  assert [n.split("  ")[0] for n in names] == [e["name"] for e in queue]
  first = queue[0]
  page.click("#queue li >> nth=0")
  page.wait_for_function(f"() => viewer.state.itemId === '{first['item']}' && "
                         f"viewer.state.frame === {first['index']}")
  page.keyboard.press("j")
  page.wait_for_function(f"() => viewer.state.itemId === '{queue[1]['item']}' && "
                         f"viewer.state.frame === {queue[1]['index']}")
  page.keyboard.press("k")
  page.wait_for_function(f"() => viewer.state.frame === {first['index']}")


def test_zoom_and_pan_keep_the_landmarks_on_the_image(session):
  page = session.page
  before = page.evaluate("viewer.state.view")
  x, y = page.evaluate("viewer.screenOf(0)")
  page.mouse.move(x, y)
  page.mouse.wheel(0, -300)  # zoom in around PS1: it stays under the mouse
  page.wait_for_function(f"() => viewer.state.view.scale > {before['scale']}")
  assert page.evaluate("viewer.screenOf(0)") == pytest.approx([x, y], abs=0.5)
  box = page.locator("#view").bounding_box()
  page.mouse.move(box["x"] + 5, box["y"] + 5)  # pan: drag where no landmark is
  page.mouse.down()
  page.mouse.move(box["x"] + 35, box["y"] + 25, steps=3)
  page.mouse.up()
  assert page.evaluate("viewer.screenOf(0)") == pytest.approx([x + 30, y + 20], abs=0.5)
  assert canvas_color(page, "PS1") == pytest.approx(COLORS["PS1"], abs=40)


def test_screenshot(session, tmp_path):
  page = session.page
  before = page.evaluate("viewer.state.drawnKeys.size")
  page.click("#queue li:has-text('labour.avi#3')")  # a frame of the clip: its plot is shown
  page.wait_for_function(f"() => viewer.state.frame === 3 && "
                         f"viewer.state.drawnKeys.size >= {before}")
  page.keyboard.press("0")
  drag(page, "FH1", 18, 10)  # a correction: the model's points stay as crosses
  path = str(tmp_path / "viewer.png")
  page.screenshot(path=path)
  image = cv2.imread(path)
  assert image is not None and image.shape[:2] == (800, 1280) and image.std() > 10
  if os.environ.get("AOP_WRITE_SCREENSHOT"):  # the README's picture: refreshed on request
    shutil.copy(path, SCREENSHOT)


def test_no_request_left_127_0_0_1(session):
  assert session.requests
  outside = [url for url in session.requests
             if not url.startswith(("http://127.0.0.1:", "blob:", "data:"))]
  assert not outside, outside
