"""What one viewer session holds: the model, the inputs opened, their predictions, the corrections.

The server (`aop_tf.viewer.server`) only turns requests into calls of this object, which itself
only calls the one predictor (`aop_tf.predictor`), the one input reader (`aop_tf.io.frames`), the
one review ranking (`aop_tf.review`) and the corrections store (`labels.LabelStore`). Points are
`(x, y)` in pixels of each frame as stored, order PS1, PS2, FH1; angles in degrees.

The model loads on a background thread (importing TensorFlow takes seconds), so the page answers
at once; a prediction asked for meanwhile waits for it.
"""

import dataclasses
import math
import os
import shutil
import tempfile
import threading
import time

import cv2
import numpy as np

from aop_tf import LANDMARK_NAMES
from aop_tf import quality
from aop_tf import results
from aop_tf import zoo
from aop_tf.io import frames
from aop_tf.io import inputs as input_files
from aop_tf.io import points
from aop_tf.viewer import labels as labels_lib

BATCH = 8  # frames of a clip per model call
MODEL_WAIT_S = 600.0  # a prediction waits this long for the model to load


class ViewerError(ValueError):
  """A request that cannot be served; `status` is its HTTP status, the message says what to do."""
  status = 400


class NotFound(ViewerError):
  status = 404


class NotReady(ViewerError):
  status = 503


class Model:
  """The predictor of `--model`, loaded on a thread; `predict` waits until it is there.

  Args:
    ref: any form `predictor.load` takes (a shipped name, a training directory, a SavedModel
      folder, a .tflite file).
    min_confidence: rows whose lowest peak is below this are flagged; None: the model card's
      threshold (`zoo.flag_min_confidence`). Unused where the card has a fitted quality model
      (`zoo.quality_fit`): rows then get its score and 90 % interval, and the flag fires on the
      score, as in `predict`.
    load_kwargs: passed to `predictor.load`.
  """

  def __init__(self, ref, min_confidence=None, **load_kwargs):
    self.ref = ref
    self.min_confidence = (zoo.flag_min_confidence(ref) if min_confidence is None
                           else float(min_confidence))
    self.uncertainty_floor_deg = zoo.uncertainty_floor_deg(ref)
    self.quality = quality.model_of(zoo.quality_fit(ref))
    self._load_kwargs = load_kwargs
    self._ready = threading.Event()
    self._lock = threading.Lock()
    self.predictor = None
    self.semi = None
    self.error = None
    self.load_seconds = math.nan

  def start(self):
    """Starts loading on a daemon thread; returns self."""
    threading.Thread(target=self._load, name="model-loader", daemon=True).start()
    return self

  def _load(self):
    start = time.perf_counter()
    try:
      from aop_tf import config  # pylint: disable=import-outside-toplevel
      from aop_tf import predictor  # pylint: disable=import-outside-toplevel
      loaded = predictor.load(self.ref, **self._load_kwargs)
      self.semi = loaded.spec.semi if loaded.spec is not None else config.SemiSpec()
      loaded.predict([np.zeros((64, 64, 1), np.uint8)])  # the first call builds the graphs
      self.predictor = loaded
    except Exception as e:  # pylint: disable=broad-except
      self.error = f"cannot load --model={self.ref}: {type(e).__name__}: {e}"
    self.load_seconds = time.perf_counter() - start
    self._ready.set()

  def status(self):
    """`{"state": "loading"|"ready"|"failed", ...}` for the page."""
    state = ("loading" if not self._ready.is_set() else "failed" if self.error else "ready")
    return {"state": state, "ref": self.ref, "error": self.error,
            "kind": getattr(self.predictor, "kind", None),
            "min_confidence": self.min_confidence,
            "uncertainty_floor_deg": self.uncertainty_floor_deg,
            "quality": None if self.quality is None else {
                k: self.quality.fitted.get(k) for k in ("coverage", "flag_score_deg",
                                                        "chosen_on")},
            "load_seconds": None if math.isnan(self.load_seconds) else self.load_seconds}

  def wait(self, timeout=MODEL_WAIT_S):
    """The predictor, once loaded; NotReady if it failed or is not there within `timeout`."""
    if not self._ready.wait(timeout):
      raise NotReady(f"the model {self.ref} is still loading; try again in a moment")
    if self.error:
      raise NotReady(self.error)
    return self.predictor

  def predict(self, images):
    """`predictor.predict` of uint8 [H, W, C] images, one call at a time (LiteRT interpreters
    are not shared between threads)."""
    model = self.wait()
    with self._lock:
      return model.predict(images)


def to_stored_pixels(frames_list, out):
  """`(landmarks [B, 3, 2], aop_deg [B])` in each frame's stored pixels: a still image reduced as
  it was read (`frames.decode_still`) was predicted small, its points go back to `size_px`."""
  from aop_tf import geometry  # pylint: disable=import-outside-toplevel
  landmarks = np.array(out["landmarks"], np.float64)
  aop = np.array(out["aop_deg"], np.float64)
  for i, frame in enumerate(frames_list):
    shown = (frame.image.shape[1], frame.image.shape[0])
    if shown != tuple(frame.size_px):
      landmarks[i] = np.asarray(geometry.rescale_points(landmarks[i], shown, frame.size_px))
      aop[i] = float(geometry.aop_deg(landmarks[i]))
  return landmarks, aop


def result_rows(frames_list, out, model):
  """`results.prediction_row`s of predicted frames, plus what the page and the review queue use:
  `landmarks` [[x, y] x 3] and `confidence` [3] (the row's columns as lists), `min_confidence`
  and `kept` (whether the pseudo-label filters pass it; `review`). With the card's quality model
  (`model.quality`) rows get its score and interval, and the flag fires on the score."""
  from aop_tf import review  # pylint: disable=import-outside-toplevel
  landmarks, aop = to_stored_pixels(frames_list, out)
  sizes = [frame.size_px for frame in frames_list]
  kept, lowest = review.filter_verdicts(landmarks, out["confidence"], sizes, model.semi)
  spreads = out.get("aop_spread_deg", np.full(len(aop), np.nan))
  fitted = quality.per_frame(model.quality, out, [f.image.shape[1::-1] for f in frames_list])
  rows = []
  for i, frame in enumerate(frames_list):
    row = results.prediction_row(frame, landmarks[i], aop[i], out["confidence"][i],
                                 float(spreads[i]), model.min_confidence,
                                 model.uncertainty_floor_deg, fitted[i])
    row.update(landmarks=landmarks[i].tolist(),
               confidence=np.asarray(out["confidence"][i], np.float64).tolist(),
               min_confidence=float(lowest[i]), kept=bool(kept[i]))
    rows.append(row)
  return rows


@dataclasses.dataclass
class Item:
  """One opened input. `source_key` names it in the corrections CSV (`labels.Label.source`).

  A clip or DICOM keeps its `source` open (a video decoder); a still image is decoded again when
  asked for (`source` None), so that a thousand opened images do not stay in memory.
  """
  id: str
  name: str
  path: str
  source_key: str
  info: frames.SourceInfo
  source: frames.Source = None
  uploaded: bool = False
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def frame(self, index):
    """Its `frames.Frame` `index` (FrameError if it cannot be read); one reader at a time."""
    with self.lock:
      if self.source is not None:
        return self.source.frame(int(index))
      with frames.open_source(self.path) as source:
        return source.frame(int(index))

  def describe(self):
    info = self.info
    return {"id": self.id, "name": self.name, "kind": info.kind, "n_frames": info.n_frames,
            "fps": info.fps if math.isfinite(info.fps) else None, "size_px": list(info.size_px),
            "is_clip": info.is_clip, "uploaded": self.uploaded}


class Workspace:
  """The session: `open_*` inputs, then `frame_png`, `result`, `timeline`, `queue`, `save`.

  Args:
    model: a `Model` (started).
    store: the `labels.LabelStore`.
    upload_dir: where dropped files are kept (a private temporary folder if None; removed by
      `close`).
  """

  def __init__(self, model, store, upload_dir=None):
    self.model = model
    self.store = store
    self._own_upload_dir = upload_dir is None
    self.upload_dir = upload_dir or tempfile.mkdtemp(prefix="aop_viewer-")
    self.problems = []  # inputs that could not be opened, in words
    self.opening = threading.Event()  # set while --inputs are being opened
    self._items = {}
    self._by_key = {}
    self._results = {}  # (item id, frame index) -> row
    self._frame_indices = {}  # item id -> the indices of a clip's frames, once all predicted
    self._lock = threading.Lock()

  def close(self):
    """Closes every source, the store, and removes the private upload folder."""
    for item in list(self._items.values()):
      if item.source is not None:
        item.source.close()
    self.store.close()
    if self._own_upload_dir:
      shutil.rmtree(self.upload_dir, ignore_errors=True)

  def items(self):
    """Every opened `Item`, in opening order."""
    return list(self._items.values())

  def item(self, item_id):
    """The `Item` of an id; NotFound otherwise."""
    item = self._items.get(str(item_id))
    if item is None:
      raise NotFound(f"no opened input {item_id!r}; open it first (GET /api/items lists them)")
    return item

  def open_path(self, path, name=None, source_key=None, uploaded=False):
    """Opens a file or frame folder (`frames.open_source`); the same input twice is one item.

    Raises ViewerError with the reader's message when it cannot be opened.
    """
    key = source_key or os.path.abspath(path)
    with self._lock:
      if key in self._by_key:
        return self._by_key[key]
      try:
        source = frames.open_source(path)
      except (frames.FrameError, OSError, ValueError) as e:
        raise ViewerError(f"cannot open {name or path}: {e}") from None
      if source.info.kind == "image":
        source.close()
      item = Item(str(len(self._items) + 1), name or os.path.basename(os.path.normpath(path)),
                  path, key, source.info, None if source.info.kind == "image" else source,
                  uploaded)
      self._items[item.id] = item
      self._by_key[key] = item
      return item

  def open_inputs(self, values, clip_dirs=False):
    """Opens `--inputs` values (`inputs.find_inputs`; with `clip_dirs`, a folder of numbered
    frames is one clip, else its images are opened one by one).

    Returns:
      `(items, problems)`: the opened items and a message per input that could not be opened.
    """
    paths, unmatched = input_files.find_inputs(values, clip_dirs=clip_dirs)
    problems = [f"--inputs entry {spec!r} matched no file" for spec in unmatched]
    items = []
    for path in paths:
      try:
        items.append(self.open_path(path))
      except ViewerError as e:
        problems.append(str(e))
    return items, problems

  def open_inputs_in_background(self, values, clip_dirs=False, on_done=None):
    """`open_inputs` on a thread (decoding may import TensorFlow: seconds), so the server answers
    meanwhile; `opening` is set until it is done, then `on_done(items, problems)` is called."""
    self.opening.set()

    def run():
      try:
        items, problems = self.open_inputs(values, clip_dirs)
        self.problems.extend(problems)
      finally:
        self.opening.clear()
      if on_done is not None:
        on_done(items, problems)

    threading.Thread(target=run, name="open-inputs", daemon=True).start()

  def open_upload(self, name, data):
    """Opens a file dropped in the page (kept in the upload folder under a safe name)."""
    name = os.path.basename(str(name or "")).strip() or "upload"
    key = labels_lib.content_source(name, data)
    with self._lock:
      if key in self._by_key:
        return self._by_key[key]
    suffix = os.path.splitext(name)[1].lower()
    suffix = suffix if suffix.replace(".", "").isalnum() and len(suffix) <= 8 else ""
    path = os.path.join(self.upload_dir, f"{len(self._items) + 1}_{labels_lib.safe_stem(name)}"
                        f"{suffix}")
    with open(path, "wb") as f:
      f.write(data)
    try:
      return self.open_path(path, name=name, source_key=key, uploaded=True)
    except ViewerError:
      os.remove(path)
      raise

  def frame(self, item, index):
    """The `frames.Frame` `index` of an item; NotFound for a frame that does not exist."""
    try:
      return item.frame(index)
    except (frames.FrameError, IndexError) as e:
      raise NotFound(str(e)) from None

  def frame_png(self, item_id, index):
    """Frame `index` of an item as PNG bytes: the pixels the model sees (a still image over
    `frames.REDUCE_PIXELS` reduced as it was read; the page scales it to `size_px`)."""
    image = self.frame(self.item(item_id), index).image
    if image.shape[2] == 3:
      image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
      raise ViewerError(f"cannot encode frame {index} of {item_id} as PNG")
    return png.tobytes()

  def _predict(self, item, frames_list):
    """Predicts frames of an item and caches their rows (`result_rows`, plus `item`, `index`
    and `name`, the item's name with `#index` for a clip)."""
    out = self.model.predict([frame.image for frame in frames_list])
    for frame, row in zip(frames_list, result_rows(frames_list, out, self.model)):
      row.update(item=item.id, index=int(frame.index),
                 name=frames.frame_name(item.name, frame.index, item.info.is_clip))
      self._results[(item.id, int(frame.index))] = row

  def _with_label(self, item, row):
    label = self.store.get(item.source_key, row["index"])
    return results.json_safe(dict(row, label=None if label is None else label.as_json()))

  def result(self, item_id, index):
    """The prediction row of one frame, with its saved label (`label`, or None)."""
    item = self.item(item_id)
    key = (item.id, int(index))
    if key not in self._results:
      self._predict(item, [self.frame(item, index)])
    return self._with_label(item, self._results[key])

  def timeline(self, item_id):
    """The rows of every frame of an item, in frame order (a still image: one)."""
    item = self.item(item_id)
    if not item.info.is_clip:
      return [self.result(item_id, 0)]
    if item.id in self._frame_indices:  # every frame predicted already
      return [self._with_label(item, self._results[(item.id, i)])
              for i in self._frame_indices[item.id]]
    pending, seen = [], []
    with item.lock:  # one pass over the clip: a video decodes sequentially
      try:
        for frame in item.source.frames():
          seen.append(frame.index)
          if (item.id, frame.index) not in self._results:
            pending.append(frame)
          if len(pending) == BATCH:
            self._predict(item, pending)
            pending = []
      except frames.FrameError as e:
        raise ViewerError(f"{item.name}: {e}") from None
    if pending:
      self._predict(item, pending)
    self._frame_indices[item.id] = seen
    return [self._with_label(item, self._results[(item.id, i)]) for i in seen]

  def queue(self):
    """Every frame of every opened input, most worth checking first (`review.rank_for_review`);
    frames already saved go last, in the same order."""
    from aop_tf import review  # pylint: disable=import-outside-toplevel
    rows = [row for item in self.items() for row in self.timeline(item.id)]
    entries = [{"item": r["item"], "index": r["index"], "name": r["name"], "kept": r["kept"],
                "min_confidence": math.nan if r["min_confidence"] is None else r["min_confidence"],
                "aop_deg": r["aop_deg"], "low_confidence": r["low_confidence"],
                "saved": r["label"] is not None} for r in rows]
    ranked = review.rank_for_review(entries, name_key="name")
    ranked = [e for e in ranked if not e["saved"]] + [e for e in ranked if e["saved"]]
    return results.json_safe(ranked)

  def save(self, item_id, index, landmarks):
    """Saves the landmarks of one frame to the corrections CSV; returns the label as JSON."""
    item = self.item(item_id)
    row = self.result(item_id, index)
    try:
      landmarks = np.asarray(landmarks, np.float64).reshape(3, 2)
    except (TypeError, ValueError):
      raise ViewerError(f"landmarks must be three [x, y] pairs (PS1, PS2, FH1); got "
                        f"{landmarks!r}") from None
    for name, point in zip(LANDMARK_NAMES, landmarks):
      try:
        points.check_in_image(point, (row["width"], row["height"]), name)
      except points.PointError as e:
        raise ViewerError(str(e)) from None
    model_points = row["landmarks"]
    if any(v is None for point in model_points for v in point):
      model_points = None
    aop = row["aop_deg"] if row["aop_deg"] is not None else math.nan
    still = item.path if item.info.kind == "image" else None
    try:
      label = self.store.save(item.source_key, int(index), landmarks, model_points, aop,
                              lambda: self.frame(item, index).image, still_path=still)
    except labels_lib.LabelError as e:
      raise ViewerError(str(e)) from None
    return results.json_safe(label.as_json())

  def predict_encoded(self, blobs):
    """Outputs for encoded images (TF Serving's bytes input), landmarks and AoP in each image's
    stored pixels; ViewerError naming the instance that cannot be decoded."""
    decoded = []
    for i, data in enumerate(blobs):
      try:
        image, size = frames.decode_still(data, f"instance {i}")
      except frames.FrameError as e:
        raise ViewerError(str(e)) from None
      decoded.append(frames.Frame(image, f"instance {i}", 0, math.nan, size))
    out = dict(self.model.predict([frame.image for frame in decoded]))
    out["landmarks"], out["aop_deg"] = (v.astype(np.float32)
                                        for v in to_stored_pixels(decoded, out))
    return out
