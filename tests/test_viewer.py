"""The viewer's server: what it answers, what it refuses, and what it saves.

One viewer runs on a real socket (uvicorn on a thread) with the shipped model and a still image, a
clip and a DICOM opened; requests go over raw HTTP (http.client sends paths as written, so `../`
and `%2e%2e` reach the server unnormalised).
"""

import base64
import csv
import http.client
import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest

from aop_tf import LANDMARK_NAMES
from aop_tf import review
from aop_tf import zoo
from aop_tf.io import points
from aop_tf.viewer import labels as labels_lib
from aop_tf.viewer import server
import clip_files
import dicom_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(REPO, "examples", "psfhs")
EXAMPLE = os.path.join(EXAMPLE_DIR, "04066.png")
EXAMPLES = sorted(os.path.join(EXAMPLE_DIR, n) for n in os.listdir(EXAMPLE_DIR)
                  if n.endswith(".png"))


def example_gray(path=EXAMPLE):
  return cv2.imread(path, cv2.IMREAD_GRAYSCALE)


class Client:
  """Raw HTTP to one viewer: `call(method, path, body=None, headers=None, token=True)` ->
  `(status, headers, body bytes)`; `json(...)` -> `(status, parsed body)`."""

  def __init__(self, viewer):
    self.viewer = viewer
    self.port = viewer.port

  def call(self, method, path, body=None, headers=None, token=True, host=None):
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or f"127.0.0.1:{self.port}")
    if token:
      conn.putheader("X-Token", self.viewer.token)
    for key, value in (headers or {}).items():
      conn.putheader(key, value)
    if isinstance(body, (dict, list)):
      body = json.dumps(body).encode()
    if body is not None and "Content-Length" not in (headers or {}):
      conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body is not None:
      conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data

  def json(self, method, path, body=None, **kwargs):
    status, _, data = self.call(method, path, body, **kwargs)
    return status, json.loads(data) if data else None


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """A still image, a 5-frame MJPG clip and a 3-frame DICOM of real example frames."""
  root = tmp_path_factory.mktemp("media")
  still = str(root / "04066.png")
  shutil.copy(EXAMPLE, still)
  frames = [example_gray(p) for p in EXAMPLES[:5]]
  clip = str(root / "clip.avi")
  clip_files.write_video(clip, frames, fps=10)
  dicom = str(root / "loop.dcm")
  dicom_files.write_dicom(dicom, frames[:3], fps=10)
  return {"root": root, "still": still, "clip": clip, "dicom": dicom}


@pytest.fixture(scope="module")
def viewer(media, tmp_path_factory):
  labels = str(tmp_path_factory.mktemp("labels") / "corrections.csv")
  v = server.Viewer("psfhs", [media["still"], media["clip"], media["dicom"]], labels,
                    max_upload_mb=1).start()
  yield v
  v.stop()


@pytest.fixture(scope="module")
def client(viewer):
  return Client(viewer)


def item_of(client, name):
  status, items = client.json("GET", "/api/items")
  assert status == 200
  return next(item for item in items if item["name"] == name)


# ---------------------------------------------------------------------------------------------
# What it answers.

def test_session_lists_the_inputs_and_the_model(client):
  status, session = client.json("GET", "/api/session")
  assert status == 200
  assert [i["name"] for i in session["items"]] == ["04066.png", "clip.avi", "loop.dcm"]
  kinds = {i["name"]: (i["kind"], i["is_clip"], i["n_frames"]) for i in session["items"]}
  assert kinds == {"04066.png": ("image", False, 1), "clip.avi": ("video", True, 5),
                   "loop.dcm": ("dicom", True, 3)}
  assert session["model"]["name"] == "psfhs"
  assert session["model"]["min_confidence"] == zoo.flag_min_confidence("psfhs")
  assert session["model"]["quality"]["coverage"] == 0.9  # the card's fitted interval


def test_result_of_a_still_is_the_predictors(client):
  from aop_tf import predictor  # pylint: disable=import-outside-toplevel
  item = item_of(client, "04066.png")
  status, row = client.json("GET", f"/api/items/{item['id']}/frames/0")
  assert status == 200
  want = predictor.load("psfhs").predict([example_gray()[..., None]])
  np.testing.assert_allclose(row["landmarks"], want["landmarks"][0], atol=1e-4)
  assert row["aop_deg"] == pytest.approx(float(want["aop_deg"][0]), abs=1e-4)
  assert row["PS1_x"] == row["landmarks"][0][0]
  # The card's quality model: the score, the 90 % range around the AoP, the flag on the score.
  fitted = zoo.quality_fit("psfhs")
  assert row["aop_low_deg"] < row["aop_deg"] < row["aop_high_deg"]
  assert row["low_confidence"] == (row["quality_score_deg"] >= fitted["flag_score_deg"])
  assert bool(row["flag_reason"]) == row["low_confidence"]
  status, headers, png = client.call("GET", f"/api/items/{item['id']}/frames/0.png")
  assert status == 200 and headers["content-type"] == "image/png"
  np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), 0), example_gray())


def test_timeline_of_a_clip_has_one_row_per_frame(client):
  for name, count in (("clip.avi", 5), ("loop.dcm", 3)):
    item = item_of(client, name)
    status, rows = client.json("GET", f"/api/items/{item['id']}/timeline")
    assert status == 200
    assert [r["index"] for r in rows] == list(range(count))
    assert all(math.isfinite(r["aop_deg"]) for r in rows)
    assert rows[2]["name"] == f"{name}#2"


def test_queue_is_ordered_by_the_review_ranking(client):
  status, queue = client.json("GET", "/api/queue")
  assert status == 200
  assert len(queue) == 1 + 5 + 3
  unsaved = [e for e in queue if not e["saved"]]
  keys = [review.review_key(e["kept"], e["min_confidence"] if e["min_confidence"] is not None
                            else math.nan, e["name"]) for e in unsaved]
  assert keys == sorted(keys)


def test_rank_for_review_puts_rejected_then_least_sure_first():
  records = [{"Filename": "a", "kept": True, "min_confidence": 0.2},
             {"Filename": "b", "kept": False, "min_confidence": 0.9},
             {"Filename": "c", "kept": True, "min_confidence": math.nan},
             {"Filename": "d", "kept": False, "min_confidence": 0.5},
             {"Filename": "e", "kept": True, "min_confidence": 0.8}]
  ranked = [r["Filename"] for r in review.rank_for_review(records)]
  assert ranked == ["d", "b", "c", "a", "e"]


# ---------------------------------------------------------------------------------------------
# Saving.

def test_save_writes_an_iugc_row_and_the_frame_png(client, viewer):
  item = item_of(client, "clip.avi")
  status, row = client.json("GET", f"/api/items/{item['id']}/frames/3")
  moved = [list(p) for p in row["landmarks"]]
  moved[2] = [moved[2][0] + 7.25, moved[2][1] - 3.5]
  status, label = client.json("POST", "/api/labels",
                              {"item": item["id"], "frame": 3, "landmarks": moved})
  assert status == 200, label
  assert label["corrected"] is True
  store = viewer.workspace.store
  with open(store.path, newline="") as f:
    rows = list(csv.DictReader(f))
  saved = next(r for r in rows if r["source"].endswith("clip.avi") and r["frame"] == "3")
  assert list(rows[0]) == list(labels_lib.COLUMNS)
  for name, point in zip(LANDMARK_NAMES, moved):
    np.testing.assert_allclose(points.parse_point(saved[name]), point, atol=1e-3)
  assert saved["corrected"] == "1"
  assert float(saved["model_aop_deg"]) == pytest.approx(row["aop_deg"], abs=1e-3)
  png = cv2.imread(os.path.join(store.folder, saved["Filename"]), cv2.IMREAD_UNCHANGED)
  assert png is not None and png.shape[:2] == (row["height"], row["width"])
  status, again = client.json("GET", f"/api/items/{item['id']}/frames/3")
  assert again["label"]["landmarks"] == label["landmarks"]


def test_accepting_the_model_is_not_a_correction_and_a_still_is_copied(client, viewer):
  item = item_of(client, "04066.png")
  _, row = client.json("GET", f"/api/items/{item['id']}/frames/0")
  status, label = client.json("POST", "/api/labels",
                              {"item": item["id"], "frame": 0, "landmarks": row["landmarks"]})
  assert status == 200 and label["corrected"] is False
  copied = os.path.join(viewer.workspace.store.folder, label["filename"])
  with open(copied, "rb") as f, open(EXAMPLE, "rb") as g:
    assert f.read() == g.read()


def test_a_restart_reads_the_saved_rows_back(viewer, media):
  store = viewer.workspace.store
  before = {(l.source, l.frame): l for l in store.all()}
  assert before
  shutil.copy(store.path, str(media["root"] / "copy.csv"))
  copy = labels_lib.LabelStore(str(media["root"] / "copy.csv"))
  try:
    after = {(l.source, l.frame): l for l in copy.all()}
  finally:
    copy.close()
  assert set(after) == set(before)
  for key, label in before.items():
    np.testing.assert_allclose(after[key].landmarks, label.landmarks, atol=1e-3)
    assert after[key].filename == label.filename and after[key].corrected == label.corrected


def test_a_second_viewer_cannot_write_the_same_csv(viewer):
  with pytest.raises(labels_lib.LabelError, match="another viewer"):
    labels_lib.LabelStore(viewer.workspace.store.path)


# ---------------------------------------------------------------------------------------------
# Guards.

def test_the_api_needs_the_token_but_the_page_does_not(client, viewer):
  status, body = client.json("GET", "/api/session", token=False)
  assert status == 403 and "token" in body["error"]
  assert client.json("GET", "/api/session", token=False,
                     headers={"X-Token": "x" + viewer.token})[0] == 403
  assert client.json("GET", f"/api/session?token={viewer.token}", token=False)[0] == 200
  assert client.json("GET", "/api/session", token=False,
                     headers={"Authorization": f"Bearer {viewer.token}"})[0] == 200
  assert client.json("GET", "/v1/models/psfhs", token=False)[0] == 403
  status, headers, page = client.call("GET", "/", token=False)
  assert status == 200 and b"<canvas" in page
  assert "default-src 'self'" in headers["content-security-policy"]
  assert client.call("GET", "/static/app.js", token=False)[0] == 200


def test_only_its_own_host_header_is_answered(client):
  for host in ("evil.example:80", f"evil.example:{client.port}", "127.0.0.1:1", "localhost"):
    status, body = client.json("GET", "/", host=host)
    assert status == 400 and "Host" in body["error"], host
  assert client.json("GET", "/api/session", host=f"localhost:{client.port}")[0] == 200


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/%2e%2e%2fserver.py",
    "/static/..%2f..%2fsetup.cfg", "/static/%2fetc%2fpasswd", "//etc/passwd", "/static//etc/passwd",
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/.%2e/workspace.py",
    "/api/items/..%2f..%2fetc%2fpasswd/frames/0.png", "/api/items/%2e%2e/frames/0.png",
    "/api/items/1/frames/-1.png", "/api/items/1/frames/99.png", "/api/items/1/frames/../0.png",
    "/static/__init__.py", "/static/", "/etc/passwd"])
def test_no_file_outside_the_page_and_the_opened_inputs(client, path):
  status, headers, body = client.call("GET", path)
  assert status in (400, 404), (path, status)
  assert b"root:" not in body and b"import " not in body
  assert json.loads(body)["error"]


def test_a_symlink_out_of_the_static_folder_is_not_served(tmp_path, viewer):
  static = tmp_path / "static"
  shutil.copytree(server.STATIC_DIR, static)
  (tmp_path / "secret.js").write_text("secret")
  os.symlink(tmp_path / "secret.js", static / "link.js")
  api = server.Api(viewer.workspace, "psfhs", 1 << 20, static_dir=str(static))
  assert "link.js" not in api.static and "app.js" in api.static


def test_an_upload_over_the_limit_gets_413(client):
  status, body = client.json("POST", "/api/items?name=big.png", b"x" * (2 << 20))
  assert status == 413 and "--max_upload_mb" in body["error"]
  # Without a Content-Length (chunked), counted as it arrives.
  conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=60)
  conn.putrequest("POST", "/api/items?name=big.png", skip_host=True)
  conn.putheader("Host", f"127.0.0.1:{client.port}")
  conn.putheader("X-Token", client.viewer.token)
  conn.putheader("Transfer-Encoding", "chunked")
  conn.endheaders()
  try:
    for _ in range(40):
      conn.send(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
    conn.send(b"0\r\n\r\n")
  except (BrokenPipeError, ConnectionResetError):
    pass
  response = conn.getresponse()
  assert response.status == 413
  assert "--max_upload_mb" in json.loads(response.read())["error"]
  conn.close()


BAD_REQUESTS = [
    ("POST", "/api/labels", b"{not json"), ("POST", "/api/labels", b"[1, 2]"),
    ("POST", "/api/labels", {"item": "1"}), ("POST", "/api/labels", {"item": "9", "frame": 0,
                                                                     "landmarks": [[1, 2]] * 3}),
    ("POST", "/api/labels", {"item": "1", "frame": "x", "landmarks": []}),
    ("POST", "/api/labels", {"item": "1", "frame": 0, "landmarks": [[1, 2], [3]]}),
    ("POST", "/api/labels", {"item": "1", "frame": 0, "landmarks": [[1e9, 2]] * 3}),
    ("POST", "/api/labels", {"item": "1", "frame": 0, "landmarks": [["a", "b"]] * 3}),
    ("POST", "/api/items?name=junk.png", b"\x89PNG\r\n\x1a\n truncated"),
    ("POST", "/api/items?name=empty.png", b""),
    ("POST", "/v1/models/psfhs:predict", b"\xff\xfe"),
    ("POST", "/v1/models/psfhs:predict", {"instances": [{"b64": "!!!"}]}),
    ("POST", "/v1/models/psfhs:predict", {"instances": [{"b64": base64.b64encode(
        b"not an image").decode()}]}),
    ("POST", "/v1/models/psfhs:predict", {"instances": [{"pixels": [1, 2]}]}),
    ("POST", "/v1/models/psfhs:predict", {"signature_name": "serve_images", "instances": []}),
    ("POST", "/v1/models/other:predict", {"instances": []}),
    ("POST", "/v1/models/psfhs:classify", {"instances": []}),
    ("GET", "/api/items/1/frames/abc", None), ("DELETE", "/api/labels", None),
    ("GET", "/api/nothing", None)]


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(client):
  item = item_of(client, "04066.png")
  _, want = client.json("GET", f"/api/items/{item['id']}/frames/0")
  for i in range(100):
    method, path, body = BAD_REQUESTS[i % len(BAD_REQUESTS)]
    status, headers, data = client.call(method, path, body)
    assert 400 <= status < 500, (method, path, status, data[:200])
    assert headers["content-type"] == "application/json"
    assert json.loads(data)["error"], (method, path)
  status, got = client.json("GET", f"/api/items/{item['id']}/frames/0")
  assert status == 200 and got["landmarks"] == want["landmarks"]


def test_an_upload_opens_and_predicts(client):
  with open(EXAMPLES[0], "rb") as f:
    data = f.read()
  status, item = client.json("POST", "/api/items?name=dropped%20scan.png", data)
  assert status == 201 and item["name"] == "dropped scan.png"
  status, again = client.json("POST", "/api/items?name=dropped%20scan.png", data)
  assert again["id"] == item["id"]  # the same file twice is one item
  status, row = client.json("GET", f"/api/items/{item['id']}/frames/0")
  assert status == 200 and len(row["landmarks"]) == 3



def test_the_store_reads_a_plain_iugc_csv_and_names_a_bad_row(tmp_path):
  path = tmp_path / "labels.csv"
  path.write_text('Filename,PS1,PS2,AOP Tangency\na.png,"(1, 2)","(3, 4)","(5, 6.5)"\n')
  (label,) = labels_lib.read_labels(str(path))
  assert label.filename == "a.png" and label.frame == 0 and label.landmarks[2] == (5.0, 6.5)
  assert label.source == os.path.join(str(tmp_path), "a.png")
  path.write_text('Filename,PS1,PS2,FH1\na.png,"(1, 2)","(3, 4)","(5, 6.5)"\nb.png,"(1,",x,y\n')
  with pytest.raises(labels_lib.LabelError, match="line 3, column PS1"):
    labels_lib.read_labels(str(path))


def test_hosts_accepted():
  assert server.accepted_hosts("127.0.0.1", 8000) == {
      "127.0.0.1:8000", "localhost:8000", "[::1]:8000"}
  assert "10.0.0.5:80" in server.accepted_hosts("10.0.0.5", 80)
  assert server.accepted_hosts("0.0.0.0", 80) is None  # any: the token alone guards it
