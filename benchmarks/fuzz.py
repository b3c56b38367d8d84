"""Fuzzing of data preparation and prediction with mutated image files and CSV rows (issue 7).

  python -m benchmarks.fuzz                          # 2000 image files, 3000 CSV rows, seed 0
  python -m benchmarks.fuzz --images=300 --rows=400 --seed=1 --out=/tmp/fuzz.json
  python -m benchmarks.fuzz --stages=hostile --out=benchmarks/results/hostile.json   # issue 17

Generates, from a few valid images (PNG 8/16-bit gray/RGB/RGBA, JPEG, BMP, TIFF, WebP, GIF), `--images`
mutated files (bit flips, overwritten and deleted runs, truncation, inserted bytes, PNG headers
declaring other sizes with valid CRCs, swapped magic numbers, spliced files, random bytes) and
`--rows` IUGC CSV rows whose cells are mutated (file names that escape the folder or hold NULs,
points with edited characters, NaN, inf, huge or negative numbers, short and long rows), written
with `csv.writer` into split CSVs, plus `--raw_csvs` whole CSV files mutated at the byte level
(encodings, BOMs, bit flips, truncation). Then three stages, each in its own process so that a
crash of a native decoder (a signal) is caught and reported rather than ending the run:

  decode      `aop_tf.io.images.decode_gray` and `aop_tf.io.frames.read_still` on every image file
  data_prep   `aop_tf.io.labels.read_rows` + `iter_records` and `data_prep.build.build_dataset` on every
              CSV: rows read = rows in the file, written + skipped = read, and the two agree
  predict     `aop_tf.predict.predict_files` with a tiny exported model (SavedModel and TFLite):
              rows + failures = files

"Crashed" counts exceptions other than the documented clear errors, and processes killed by a
signal. Results go to `benchmarks/results/fuzz.json` with the machine's load. Exit status 0 when
nothing crashed and every input was accounted for.
"""

import collections
import csv
import io
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_integer("images", 2000, "Mutated image files.")
flags.DEFINE_integer("rows", 3000, "Mutated CSV rows (written with csv.writer).")
flags.DEFINE_integer("rows_per_csv", 250, "Rows per split CSV.")
flags.DEFINE_integer("raw_csvs", 40, "Whole CSV files mutated at the byte level.")
flags.DEFINE_integer("seed", 0, "Random seed of the mutations.")
flags.DEFINE_string("work_dir", None, "Where the inputs are written; default a temp folder.")
flags.DEFINE_boolean("keep", False, "Keep the work folder.")
flags.DEFINE_list("stages", ["decode", "data_prep", "predict"],
                  "Stages to run: decode, data_prep, predict (mutated inputs) and hostile (huge "
                  "images, FIFOs, /dev/zero, concurrent runs, each with its peak memory; "
                  "benchmarks/hostile.py).")
flags.DEFINE_integer("hostile_side", 10000, "Side in pixels of the hostile stage's huge images.")
flags.DEFINE_string("worker", None, "Internal: run one stage (decode, data_prep, predict).")
flags.DEFINE_string("out", os.path.join(REPO_ROOT, "benchmarks", "results", "fuzz.json"),
                    "Output JSON.")
FLAGS = flags.FLAGS

WIDTH, HEIGHT = 64, 48  # the valid images; valid points below lie inside them
VALID_POINTS = ("(10, 5)", "(50, 20)", "(30, 30)")
STAGES = ("decode", "data_prep", "predict", "hostile")


# ---------------------------------------------------------------------------------------------
# Inputs.


def _seed_images():
  """{name: bytes} of valid images in every format the readers accept."""
  import cv2  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
  gray = ((xx * 4 + yy * 3) % 256).astype(np.uint8)
  rgb = np.dstack([gray, 255 - gray, (gray // 2)])
  seeds = {
      "gray.png": cv2.imencode(".png", gray)[1].tobytes(),
      "rgb.png": cv2.imencode(".png", rgb)[1].tobytes(),
      "rgba.png": cv2.imencode(".png", np.dstack([rgb, gray]))[1].tobytes(),
      "gray16.png": cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes(),
      "gray.jpg": cv2.imencode(".jpg", gray)[1].tobytes(),
      "rgb.jpg": cv2.imencode(".jpg", rgb)[1].tobytes(),
      "gray.bmp": cv2.imencode(".bmp", gray)[1].tobytes(),
      "gray.tif": cv2.imencode(".tif", gray)[1].tobytes(),
      "gray.webp": cv2.imencode(".webp", gray)[1].tobytes(),
  }
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "GIF")
    seeds["gray.gif"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(gray).convert("CMYK").save(buf, "JPEG")
    seeds["cmyk.jpg"] = buf.getvalue()
  except ImportError:
    pass
  return seeds


def _png_with_header(data, rng):
  """A PNG whose IHDR declares another size (valid CRC, so decoders read on)."""
  if not data.startswith(b"\x89PNG") or len(data) < 33:
    return data
  width = rng.choice([0, 1, 2, WIDTH, 65535, 100000, 2**31 - 1, rng.randrange(1, 2**31)])
  height = rng.choice([0, 1, HEIGHT, 65535, 100000, 2**31 - 1, rng.randrange(1, 2**31)])
  ihdr = bytearray(data[16:29])
  ihdr[0:8] = struct.pack(">II", width, height)
  if rng.random() < 0.3:
    ihdr[8] = rng.choice([1, 2, 4, 8, 16, 3, 7])  # bit depth
    ihdr[9] = rng.choice([0, 2, 3, 4, 6, 5])  # colour type
  crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
  return data[:16] + bytes(ihdr) + crc + data[33:]


def _mutate(data, rng, others):
  """One random mutation of `data` (bytes); `others`: seed files to splice or borrow from."""
  kind = rng.choice(["flip", "overwrite", "truncate", "insert", "delete", "png_header",
                     "magic", "splice", "random", "repeat_chunk"])
  data = bytearray(data)
  n = len(data)
  if kind == "flip" and n:
    for _ in range(rng.randint(1, 16)):
      i = rng.randrange(n)
      data[i] ^= 1 << rng.randrange(8)
  elif kind == "overwrite" and n:
    i = rng.randrange(n)
    data[i:i + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
  elif kind == "truncate":
    data = data[:rng.randint(0, max(0, n - 1))]
  elif kind == "insert":
    i = rng.randint(0, n)
    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 256)))
  elif kind == "delete" and n:
    i = rng.randrange(n)
    del data[i:i + rng.randint(1, 256)]
  elif kind == "png_header":
    data = bytearray(_png_with_header(bytes(data), rng))
  elif kind == "magic":
    magic = rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"GIF89a",
                        b"RIFF\x00\x00\x00\x00WEBP"])
    data[:len(magic)] = magic
  elif kind == "splice":
    other = rng.choice(others)
    cut = rng.randint(0, n)
    data = data[:cut] + other[rng.randint(0, len(other)):]
  elif kind == "random":
    data = bytearray(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 64, 1000])))
  elif kind == "repeat_chunk" and n > 40:
    i = rng.randrange(8, n - 16)
    data[i:i] = data[i:i + rng.randint(8, 64)] * rng.randint(2, 50)
  return kind, bytes(data)


def _mutate_point(rng):
  base = rng.choice(VALID_POINTS)
  kind = rng.randrange(10)
  if kind == 0:
    return base
  if kind == 1:  # character edits
    text = list(base)
    for _ in range(rng.randint(1, 3)):
      i = rng.randrange(len(text) + 1)
      op = rng.randrange(3)
      char = rng.choice('(), .-+eE0123456789xn"\'\n\t\x00é١;')
      if op == 0 and i < len(text):
        del text[i]
      elif op == 1:
        text.insert(i, char)
      elif i < len(text):
        text[i] = char
    return "".join(text)
  if kind == 2:
    return f"({rng.choice(['nan', 'inf', '-inf', '1e999', 'NaN', '0x10'])}, 5)"
  if kind == 3:
    return f"({rng.uniform(-1e6, 1e6)}, {rng.uniform(-1e6, 1e6)})"
  if kind == 4:
    return f"({rng.uniform(-2, WIDTH + 2):.3f}, {rng.uniform(-2, HEIGHT + 2):.3f})"
  if kind == 5:
    return rng.choice(["", " ", "()", "(12, )", "( , 3)", "(1, 2, 3)", "[1, 2]", "1, 2"])
  if kind == 6:
    return "(10, 5)"  # coincides with PS1's usual value: degenerate rows
  return base


def _mutate_filename(rng, names):
  kind = rng.randrange(12)
  if kind < 6:
    return rng.choice(names)
  return rng.choice([
      "../outside.png", "/etc/passwd", "sub/../../x.png", "C:\\x.png", "\\\\srv\\x.png",
      "link_out.png", "nothing.png", "", " ", "a\x00b.png", "dir.png", "é.png", "x" * 300,
      "./" + rng.choice(names), rng.choice(names).upper(), "link_in.png"])


def _mutated_row(rng, names):
  row = [_mutate_filename(rng, names)] + [_mutate_point(rng) for _ in range(3)]
  if rng.random() < 0.05:
    row = row[:rng.randint(0, 3)]  # short row
  elif rng.random() < 0.05:
    row += ["extra", "cells"]
  return row


def generate(work, n_images, n_rows, rows_per_csv, n_raw, seed):
  """Writes the fuzz inputs under `work`; returns the manifest dict."""
  rng = random.Random(seed)
  images_dir = os.path.join(work, "images")
  os.makedirs(images_dir)
  seeds = _seed_images()
  for name, data in seeds.items():
    with open(os.path.join(images_dir, name), "wb") as f:
      f.write(data)
  others = list(seeds.values())
  mutations = collections.Counter()
  mutants = []
  for i in range(n_images):
    base_name = rng.choice(sorted(seeds))
    data = seeds[base_name]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
      kind, data = _mutate(data, rng, others)
      mutations[kind] += 1
    name = f"m{i:05d}{os.path.splitext(base_name)[1]}"
    with open(os.path.join(images_dir, name), "wb") as f:
      f.write(data)
    mutants.append(name)
  # Things the file-name mutations point at.
  outside = os.path.join(work, "outside.png")
  shutil.copy(os.path.join(images_dir, "gray.png"), outside)
  os.symlink(outside, os.path.join(images_dir, "link_out.png"))
  os.symlink(os.path.join(images_dir, "gray.png"), os.path.join(images_dir, "link_in.png"))
  os.makedirs(os.path.join(images_dir, "dir.png"))
  shutil.copy(os.path.join(images_dir, "gray.png"), os.path.join(images_dir, "é.png"))

  names = sorted(seeds) + mutants
  csv_dir = os.path.join(work, "csv")
  os.makedirs(csv_dir)
  csvs, written = [], 0
  while written < n_rows:
    count = min(rows_per_csv, n_rows - written)
    path = os.path.join(csv_dir, f"rows_{len(csvs):03d}.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["Filename", "PS1", "PS2", "FH1"])
      rows = [_mutated_row(rng, names) for _ in range(count)]
      writer.writerows(rows)
    # An empty row is written as a blank line, which readers skip (not a row).
    csvs.append({"path": path, "rows": sum(1 for r in rows if r)})
    written += count
  raw = []
  for i in range(n_raw):
    rows = [[rng.choice(names[:20])] + list(VALID_POINTS) for _ in range(rng.randint(0, 30))]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([rng.choice(["Filename", "filename", "File"]), "PS1", "PS2",
                     rng.choice(["FH1", "AOP Tangency", "FH"])])
    writer.writerows(rows)
    encoding = rng.choice(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "cp1252", "utf-32"])
    data = buf.getvalue().encode(encoding, errors="replace")
    for _ in range(rng.choice([0, 1, 2])):
      data = _mutate(data, rng, [data])[1]
    path = os.path.join(csv_dir, f"raw_{i:03d}.csv")
    with open(path, "wb") as f:
      f.write(data)
    raw.append({"path": path})
  manifest = {"seed": seed, "images_dir": images_dir, "image_files": names,
              "n_seed_images": len(seeds), "mutations": dict(mutations), "csvs": csvs,
              "raw_csvs": raw}
  with open(os.path.join(work, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return manifest


# ---------------------------------------------------------------------------------------------
# Stages (each runs in its own process: `--worker=<stage>`).


def _crash(crashes, where, error):
  crashes.append({"input": where, "error": f"{type(error).__name__}: {error}"[:500],
                  "traceback": traceback.format_exc()[-2000:]})


def stage_decode(manifest):
  """Each file gets one outcome per reader: decoded, refused (the clear error) or crashed."""
  from aop_tf.io import frames  # pylint: disable=import-outside-toplevel
  from aop_tf.io import images  # pylint: disable=import-outside-toplevel
  readers = {
      "data_prep_read_gray": (lambda p: images.decode_gray(images.read_bytes(p), p),
                              images.ImageError),
      "predict_read_image": (lambda p: frames.read_still(p)[0], ValueError),
  }
  outcomes = {name: collections.Counter() for name in readers}
  crashes = []
  for name in manifest["image_files"]:
    path = os.path.join(manifest["images_dir"], name)
    for reader, (read, clear_error) in readers.items():
      try:
        read(path)
        outcomes[reader]["decoded"] += 1
      except clear_error:
        outcomes[reader]["refused"] += 1
      except Exception as e:  # pylint: disable=broad-except
        outcomes[reader]["crashed"] += 1
        _crash(crashes, path, e)
  n = len(manifest["image_files"])
  return {"inputs": n, **{k: dict(v) for k, v in outcomes.items()}, "crashed": len(crashes),
          "crashes": crashes[:20],
          "accounted": all(sum(c.values()) == n for c in outcomes.values()) and not crashes}


def _prep_one(path, images_dir, out_dir):
  """(row-level summary, build summary or the build's clear error) for one CSV."""
  from aop_tf.io import labels  # pylint: disable=import-outside-toplevel
  from aop_tf.io.records import InputError, Record  # pylint: disable=import-outside-toplevel
  from data_prep import build  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    rows = labels.read_rows(path)
  except ValueError as e:
    return {"file_error": str(e)[:300]}, None
  items = list(labels.iter_records(rows, images_dir, {}, "train"))
  assert all(isinstance(i, (Record, InputError)) for i in items)
  reasons = collections.Counter(i.reason for i in items if isinstance(i, InputError))
  rowwise = {"read": len(rows), "ok": sum(isinstance(i, Record) for i in items),
             "skipped": dict(reasons)}
  try:
    target = build.build_dataset("csv", data_dir=os.path.dirname(path), out_dir=out_dir,
                                 csv={"train": path}, image_dir=images_dir, overwrite=True,
                                 verbose=False)
  except ValueError as e:
    return rowwise, {"error": str(e).splitlines()[0][:300]}
  built = tfds.builder_from_directory(target).info.metadata["splits"]["train"]
  shutil.rmtree(out_dir, ignore_errors=True)
  return rowwise, built


def stage_data_prep(manifest, work):
  crashes, files = [], []
  file_errors = collections.Counter()  # whole-file refusals by message (path removed)
  totals = collections.Counter()
  skipped = collections.Counter()
  consistent = True
  for i, entry in enumerate(manifest["csvs"] + manifest["raw_csvs"]):
    path = entry["path"]
    try:
      rowwise, built = _prep_one(path, manifest["images_dir"], os.path.join(work, f"out_{i}"))
    except Exception as e:  # pylint: disable=broad-except
      _crash(crashes, path, e)
      continue
    record = {"csv": os.path.basename(path), "rowwise": rowwise, "build": built}
    if "file_error" in rowwise:
      totals["csv_files_refused_whole"] += 1
      file_errors[rowwise["file_error"].split(": ", 1)[-1][:60]] += 1
      # Files written by csv.writer are always readable: a whole-file refusal would lose rows.
      consistent &= "rows" not in entry
    else:
      totals["rows_read"] += rowwise["read"]
      if "rows" in entry:
        totals["rows_in_files"] += entry["rows"]
        consistent &= rowwise["read"] == entry["rows"]
      consistent &= rowwise["read"] == rowwise["ok"] + sum(rowwise["skipped"].values())
      if built is not None and "error" not in built:
        totals["rows_written"] += built["written"]
        totals["rows_skipped"] += sum(built["skipped"].values())
        skipped.update(built["skipped"])
        consistent &= built["read"] == rowwise["read"]
        consistent &= built["read"] == built["written"] + sum(built["skipped"].values())
        # The build refuses degenerate rows itself too; every row-level refusal is a refusal.
        consistent &= built["written"] <= rowwise["ok"]
      else:
        totals["builds_with_no_usable_rows"] += 1
        totals["rows_skipped"] += rowwise["read"]
        skipped.update(rowwise["skipped"])
        consistent &= rowwise["ok"] == 0
    files.append(record)
  n_files = len(manifest["csvs"]) + len(manifest["raw_csvs"])
  return {"csv_files": n_files, "csv_files_written_by_csv_writer": len(manifest["csvs"]),
          "raw_mutated_csv_files": len(manifest["raw_csvs"]), **totals,
          "skipped_by_reason": dict(skipped), "whole_file_refusals": dict(file_errors),
          "crashed": len(crashes), "crashes": crashes[:20],
          "accounted": bool(consistent) and not crashes and len(files) == n_files,
          "files": files}


def tiny_export(work):
  """Exports an untrained 64-pixel model to `work`/export (SavedModel + TFLite); -> its path."""
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from aop_tf import config as config_lib, export  # pylint: disable=import-outside-toplevel
  from aop_tf.model import build_unet  # pylint: disable=import-outside-toplevel
  spec = config_lib.RunSpec().replace(input_size=64, base_filters=4, depth=2, heatmap_size=16,
                                      sigma_cells=1.5, decode_method="dark", decode_blur_sigma=1.0)
  keras.utils.set_random_seed(0)
  export_dir = os.path.join(work, "export")
  export.export(build_unet(**spec.model_kwargs()), spec, export_dir,
                test_images=[np.full((48, 64, 1), 100, np.uint8)])
  return export_dir


def stage_hostile(work):
  """Hostile inputs through the command lines (benchmarks/hostile.py), with peak memory."""
  from benchmarks import hostile  # pylint: disable=import-outside-toplevel
  from data_prep import build  # pylint: disable=import-outside-toplevel
  phantom_dir = os.path.join(work, "phantom")
  build.build_dataset("phantom", out_dir=phantom_dir, phantom_counts={"train": 16, "val": 4},
                      verbose=False)
  cases = hostile.cases(os.path.join(work, "hostile"), tiny_export(work), phantom_dir,
                        side=FLAGS.hostile_side)
  peaks = [c["peak_rss_mib"] for c in cases.values() if c.get("peak_rss_mib")]
  return {"limit_mib": hostile.LIMIT_MIB, "worst_peak_rss_mib": max(peaks, default=None),
          "cases": cases, "crashed": 0, "accounted": all(c["ok"] for c in cases.values())}


def stage_predict(manifest, work):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from aop_tf import predict, predictor  # pylint: disable=import-outside-toplevel
  export_dir = tiny_export(work)
  paths = [os.path.join(manifest["images_dir"], n) for n in manifest["image_files"]]
  result = {"inputs": len(paths)}
  crashes = []
  for backend, path in (("savedmodel", export_dir),
                        ("tflite", os.path.join(export_dir, "model.tflite"))):
    start = time.perf_counter()
    try:
      model = predictor.load(path)
      rows, failures = predict.predict_files(model, paths, batch_size=8, num_workers=2,
                                             progress=False)
    except Exception as e:  # pylint: disable=broad-except
      _crash(crashes, backend, e)
      continue
    got = sorted([r["filename"] for r in rows] + [p for p, _ in failures])
    nonfinite = sum(1 for r in rows if not all(np.isfinite(r[k]) for k in r
                                                if k.endswith(("_x", "_y"))))
    result[backend] = {"rows": len(rows), "failures": len(failures),
                       "degenerate": sum(r["degenerate"] for r in rows),
                       "low_confidence": sum(r["low_confidence"] for r in rows),
                       "non_finite_points_unflagged": sum(
                           1 for r in rows if not r["low_confidence"] and not all(
                               np.isfinite(r[k]) for k in r if k.endswith(("_x", "_y")))),
                       "non_finite_points": nonfinite,
                       "seconds": round(time.perf_counter() - start, 1),
                       "accounted": got == sorted(paths)}
  result["crashed"] = len(crashes)
  result["crashes"] = crashes[:20]
  result["accounted"] = not crashes and all(
      result.get(b, {}).get("accounted") and not result[b]["non_finite_points_unflagged"]
      for b in ("savedmodel", "tflite"))
  return result


def _worker(stage, work):
  manifest = None
  if stage != "hostile":
    with open(os.path.join(work, "manifest.json")) as f:
      manifest = json.load(f)
  start = time.perf_counter()
  if stage == "decode":
    result = stage_decode(manifest)
  elif stage == "data_prep":
    result = stage_data_prep(manifest, work)
  elif stage == "hostile":
    result = stage_hostile(work)
  else:
    result = stage_predict(manifest, work)
  result["seconds"] = round(time.perf_counter() - start, 1)
  with open(os.path.join(work, f"{stage}.json"), "w") as f:
    json.dump(result, f, indent=1)


def _run_stage(stage, work):
  """Runs one stage in a child process; a death by signal is reported as a crash."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", f"--worker={stage}",
                         f"--work_dir={work}", f"--hostile_side={FLAGS.hostile_side}"], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True)
  path = os.path.join(work, f"{stage}.json")
  if proc.returncode != 0 or not os.path.exists(path):
    return {"crashed": 1, "accounted": False, "process_exit": proc.returncode,
            "output_tail": (proc.stdout + proc.stderr)[-3000:]}
  with open(path) as f:
    return json.load(f)


def main(argv):
  del argv
  if FLAGS.worker:
    _worker(FLAGS.worker, FLAGS.work_dir)
    return 0
  start = time.time()
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="aop_fuzz_")
  os.makedirs(work, exist_ok=True)
  unknown = set(FLAGS.stages) - set(STAGES)
  if unknown:
    raise app.UsageError(f"--stages: unknown {sorted(unknown)}; choose from {', '.join(STAGES)}")
  manifest = {"image_files": [], "n_seed_images": 0, "mutations": {}, "csvs": []}
  if set(FLAGS.stages) - {"hostile"}:
    print(f"[fuzz] writing {FLAGS.images} mutated images and {FLAGS.rows} CSV rows (+ "
          f"{FLAGS.raw_csvs} byte-mutated CSVs) to {work}", flush=True)
    manifest = generate(work, FLAGS.images, FLAGS.rows, FLAGS.rows_per_csv, FLAGS.raw_csvs,
                        FLAGS.seed)
  stages = {}
  for stage in FLAGS.stages:
    print(f"[fuzz] stage {stage} ...", flush=True)
    stages[stage] = _run_stage(stage, work)
    summary = {k: v for k, v in stages[stage].items() if k not in ("files", "crashes")}
    print(f"[fuzz]   {json.dumps(summary)[:600]}", flush=True)
  nothing_crashed = all(s.get("crashed", 1) == 0 for s in stages.values())
  accounted = all(s.get("accounted") for s in stages.values())
  if "data_prep" in stages:
    stages["data_prep"] = {k: v for k, v in stages["data_prep"].items() if k != "files"}
  report = {
      "command": "python -m benchmarks.fuzz " + " ".join(
          f"--{k}={getattr(FLAGS, k)}" for k in ("images", "rows", "rows_per_csv", "raw_csvs",
                                                  "seed")) + " --stages=" + ",".join(FLAGS.stages),
      "seed": FLAGS.seed,
      "n_image_files": len(manifest["image_files"]),
      "n_seed_images": manifest["n_seed_images"],
      "image_mutations": manifest["mutations"],
      "n_csv_rows": sum(c["rows"] for c in manifest["csvs"]),
      "nothing_crashed": nothing_crashed,
      "every_input_accounted_for": accounted,
      "stages": stages,
      "seconds": round(time.time() - start, 1),
      "load_average": os.getloadavg(),
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "python": platform.python_version()},
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  print(f"[fuzz] nothing crashed: {nothing_crashed}; every input accounted for: {accounted}; "
        f"{report['seconds']} s -> {FLAGS.out}")
  if not FLAGS.keep and not FLAGS.work_dir:
    shutil.rmtree(work, ignore_errors=True)
  return 0 if nothing_crashed and accounted else 1


if __name__ == "__main__":
  app.run(main)
