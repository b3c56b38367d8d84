"""End-to-end tests of `python -m aop_tf.evaluate` on a tiny phantom dataset and untrained models."""

import csv
import json
import os

import numpy as np
import pytest

from aop_tf import evaluate
from aop_tf import serving
from aop_tf import visualize
from data_prep import build
import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_VAL = 5
SPEC = helpers.tiny_spec(input_size=32, heatmap_size=8, sigma_cells=1.0, decode_blur_sigma=0.0)
REPORT_KEYS = ("n_images", "mre_px", "mre_512", "mae_px", "mae_512", "aop_error_deg",
               "aop_agreement_120", "n_degenerate", "sdr_512", "model", "data", "decode",
               "inference_ms_per_image", "batch_size")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("phantom")
  return build.build_dataset("phantom", out_dir=str(out), phantom_counts={"val": N_VAL},
                             phantom_size=64, overwrite=True, verbose=False)


def _make_model_dir(folder, zero_heatmaps=False):
  net = helpers.write_model_dir(str(folder), SPEC, zero_heatmaps=zero_heatmaps)
  return str(folder), net


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return _make_model_dir(tmp_path_factory.mktemp("run"))


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_evaluate_writes_report_csv_and_overlays(phantom_dir, model_dir):
  folder, _ = model_dir
  out = os.path.join(folder, "eval_lib")
  result = evaluate.evaluate(folder, data_dir=phantom_dir, split="val", output_dir=out,
                             overlays=2, batch_size=2, progress=False, verbose=False)
  with open(os.path.join(out, "report.json")) as f:
    report = json.load(f)
  for key in REPORT_KEYS:
    assert key in report, key
  assert report == json.loads(json.dumps(result))
  assert report["n_images"] == N_VAL
  assert set(report["mre_512"]) >= {"PS1", "PS2", "FH1", "mean"}
  assert set(report["aop_error_deg"]) >= {"mean", "median", "sd", "p90"}
  assert report["decode"] == {"method": "dark", "blur_sigma_cells": 0.0,
                              "fh1_method": "heatmap", "heatmap_scale": 1.0}
  assert report["model"]["checkpoint"] == "latest"
  # 64 px phantom images: 512-space errors are 8x the pixel errors.
  assert report["mre_512"]["mean"] == pytest.approx(8 * report["mre_px"]["mean"], rel=1e-5)

  rows = _read_csv(os.path.join(out, "per_image.csv"))
  assert len(rows) == N_VAL
  for column in ("filename", "gt_PS1_x", "FH1_y", "err_PS2_px", "err_PS2_512",
                 "aop_gt_deg", "aop_deg", "aop_error_deg", "degenerate", "FH1_confidence",
                 "low_confidence", "flag_reason"):
    assert column in rows[0], column
  mean_from_csv = np.mean([[float(r[f"err_{n}_px"]) for n in ("PS1", "PS2", "FH1")]
                           for r in rows])
  assert mean_from_csv == pytest.approx(report["mre_px"]["mean"], abs=1e-3)

  pictures = sorted(os.listdir(os.path.join(out, "overlays")))
  assert len(pictures) == 4 and report["n_overlays"] == 2
  assert pictures[0].startswith("0000_") and pictures[1].endswith("_heatmaps.png")


def test_decode_override_and_worst_overlays(phantom_dir, model_dir):
  folder, _ = model_dir
  out = os.path.join(folder, "eval_argmax")
  report = evaluate.evaluate(folder, data_dir=phantom_dir, split="val", output_dir=out,
                             decode_method="argmax", overlays=-1, overlay_order="worst",
                             progress=False, verbose=False)
  assert report["decode"]["method"] == "argmax"
  assert report["n_overlays"] == N_VAL
  rows = _read_csv(os.path.join(out, "per_image.csv"))
  worst = int(np.argmax([float(r["mre_px"]) for r in rows]))
  assert sum(name.endswith("_heatmaps.png") for name in os.listdir(os.path.join(out, "overlays"))
             ) == N_VAL
  assert any(name.startswith(f"{worst:04d}_") for name in os.listdir(os.path.join(out,
                                                                                 "overlays")))


def test_degenerate_predictions_are_reported_not_fatal(phantom_dir, tmp_path):
  folder, _ = _make_model_dir(tmp_path / "flat", zero_heatmaps=True)
  report = evaluate.evaluate(folder, data_dir=phantom_dir, split="val", overlays=1,
                             progress=False, verbose=False)
  assert report["n_degenerate"] == N_VAL
  assert report["aop_error_deg"]["mean"] is None
  rows = _read_csv(os.path.join(folder, "eval_val", "per_image.csv"))
  assert [r["degenerate"] for r in rows] == ["1"] * N_VAL
  assert all(r["aop_deg"] == "nan" for r in rows)
  assert os.path.exists(os.path.join(folder, "eval_val", "report.json"))


def test_bad_arguments_say_what_to_do(phantom_dir, model_dir, tmp_path):
  folder, _ = model_dir
  with pytest.raises(ValueError, match="either --data_dir"):
    evaluate.evaluate(folder, progress=False, verbose=False)
  with pytest.raises(ValueError, match="go together"):
    evaluate.evaluate(folder, images_dir=str(tmp_path), progress=False, verbose=False)
  with pytest.raises(FileNotFoundError, match="missing does not exist"):
    evaluate.evaluate(str(tmp_path / "missing"), data_dir=phantom_dir, verbose=False)
  with pytest.raises(FileNotFoundError, match="config.json"):
    evaluate.evaluate(str(tmp_path), data_dir=phantom_dir, verbose=False)
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    evaluate.evaluate(folder, checkpoint="epoch_0099", data_dir=phantom_dir, verbose=False)


def test_command_line_with_flagfile(phantom_dir, model_dir, tmp_path, entry_points):
  folder, _ = model_dir
  out = tmp_path / "cli"
  flagfile = tmp_path / "eval.cfg"
  flagfile.write_text(f"--model={folder}\n--data_dir={phantom_dir}\n--split=val\n"
                      f"--output_dir={out}\n--overlays=0\n--batch_size=3\n")
  code, stdout, stderr = entry_points.run("aop_tf.evaluate", [f"--flagfile={flagfile}"])
  assert code == 0, stderr[-3000:]
  assert "mre_512" in stdout and "AoP error deg" in stdout
  assert len(_read_csv(out / "per_image.csv")) == N_VAL
  assert json.loads((out / "report.json").read_text())["batch_size"] == 3
  assert not (out / "overlays").exists()


def test_saved_model_serve_images_matches_keras(phantom_dir, model_dir, tmp_path):
  folder, net = model_dir
  export_dir = str(tmp_path / "export")
  serving.serving_archive(net, SPEC.heatmap_codec()).write_out(export_dir, verbose=False)
  keras_report = evaluate.evaluate(folder, data_dir=phantom_dir, output_dir=str(tmp_path / "k"),
                                   overlays=0, progress=False, verbose=False)
  report = evaluate.evaluate(export_dir, data_dir=phantom_dir, overlays=1, batch_size=2,
                             progress=False, verbose=False)
  assert report["model"]["kind"] == "saved_model"
  assert report["n_overlays"] == 1
  # The export's own resize + decoder reproduce the Keras pipeline.
  assert report["mre_px"]["mean"] == pytest.approx(keras_report["mre_px"]["mean"], abs=0.05)
  rows = _read_csv(os.path.join(export_dir, "eval_val", "per_image.csv"))
  assert len(rows) == N_VAL
  # Another decoder: the export's heatmaps decoded again agree with the Keras model decoded so.
  argmax = evaluate.evaluate(export_dir, data_dir=phantom_dir, decode_method="argmax",
                             output_dir=str(tmp_path / "sa"), overlays=0, progress=False,
                             verbose=False)
  keras_argmax = evaluate.evaluate(folder, data_dir=phantom_dir, decode_method="argmax",
                                   output_dir=str(tmp_path / "ka"), overlays=0, progress=False,
                                   verbose=False)
  assert argmax["model"]["redecoded"] and argmax["decode"]["method"] == "argmax"
  assert argmax["mre_px"]["mean"] == pytest.approx(keras_argmax["mre_px"]["mean"], abs=0.05)
  assert argmax["mre_px"]["mean"] != pytest.approx(report["mre_px"]["mean"], abs=1e-4)


def _write_phantom_images(phantom_dir, folder):
  """Writes the phantom's val images as PNGs and an IUGC-format labels CSV; returns its path."""
  from aop_tf import data  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  labels = os.path.join(folder, "labels.csv")
  with open(labels, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["Filename", "PS1", "PS2", "FH1", "AoP"])
    for ex in data.load_split(phantom_dir, "val").as_numpy_iterator():
      name = ex["filename"].decode()
      visualize.save_png(os.path.join(folder, name), ex["image"][..., 0])
      points = [f"({x!r}, {y!r})" for x, y in ex["landmarks"].astype(float).tolist()]
      writer.writerow([name] + points + [f"{float(ex['aop_deg']):.4f}"])
  return labels


def test_images_dir_with_labels_csv_matches_dataset(phantom_dir, model_dir, tmp_path):
  folder, _ = model_dir
  labels = _write_phantom_images(phantom_dir, str(tmp_path / "images"))
  report = evaluate.evaluate(folder, images_dir=str(tmp_path / "images"), labels_csv=labels,
                             overlays=1, progress=False, verbose=False)
  reference = evaluate.evaluate(folder, data_dir=phantom_dir, output_dir=str(tmp_path / "ref"),
                                overlays=0, progress=False, verbose=False)
  assert report["n_images"] == N_VAL and report["data"]["n_skipped"] == 0
  assert report["mre_px"]["mean"] == pytest.approx(reference["mre_px"]["mean"], abs=1e-3)
  assert os.path.exists(os.path.join(folder, "eval_labels", "per_image.csv"))


def test_real_psfhs_images_with_labels_csv(model_dir, tmp_path):
  psfhs = os.environ.get("AOP_PSFHS_DIR", os.path.join(REPO, "..", "shared", "data", "psfhs"))
  if not os.path.exists(os.path.join(psfhs, "val.csv")):
    pytest.skip(f"PSFHS data not found at {psfhs} (set AOP_PSFHS_DIR)")
  with open(os.path.join(psfhs, "val.csv")) as f:
    head = [next(f) for _ in range(5)]  # header + 4 rows
  labels = tmp_path / "val4.csv"
  labels.write_text("".join(head))
  folder, _ = model_dir
  report = evaluate.evaluate(folder, images_dir=os.path.join(psfhs, "images"),
                             labels_csv=str(labels), output_dir=str(tmp_path / "out"),
                             overlays=1, progress=False, verbose=False)
  assert report["n_images"] == 4
  # 256x256 images: 512-space errors are twice the pixel errors.
  assert report["mre_512"]["mean"] == pytest.approx(2 * report["mre_px"]["mean"], rel=1e-5)
