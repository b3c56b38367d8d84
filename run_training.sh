#!/usr/bin/env bash
# The main job: dataset -> train -> evaluate -> export (SavedModel + TFLite) -> predict, then says
# where the report, overlays, TensorBoard logs and exports are. Sets up .venv on first use.
#
# Usage:
#   ./run_training.sh                     first run (about 4 minutes): the shipped PSFHS model
#                                         measures the AoP on the six real example images
#                                         (examples/psfhs), then the phantom demo trains
#                                         aop_tf/configs/demo.cfg on synthetic images
#   ./run_training.sh --psfhs [DIR]       PSFHS (masks source) with aop_tf/configs/cpu.cfg;
#                                         DIR defaults to $AOP_PSFHS_DIR or ../shared/data/psfhs
#   ./run_training.sh --iugc DIR          IUGC 2025 layout (csv source: images + train/val CSVs);
#                                         with DIR/unlabeled/ (images without labels) the run is
#                                         semi-supervised: cpu.cfg + ssl.cfg (a mean teacher)
# Options:
#   --flagfile FILE    training flagfile (default as above); its name names the run
#   --name NAME        run name: runs/NAME, saved_models/NAME (default <config>_<dataset>)
#   --rebuild          rebuild the dataset even if data/<dataset> already holds one
#   -- ARGS...         extra flags for `python -m aop_tf.train` (they override the flagfile)
# Running the same command again resumes training where it stopped.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

usage() {  # prints the comment block above
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit "${1:-0}"
}
die() { echo "run_training.sh: error: $*" >&2; exit 2; }
step() { printf '\n==== %s ====\n' "$*"; }

DATASET=phantom
SOURCE_DIR=""
FLAGFILE=""
NAME=""
REBUILD=0
TRAIN_ARGS=()
SEMI_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --psfhs)
      DATASET=psfhs
      if [[ $# -gt 1 && "$2" != --* ]]; then SOURCE_DIR=$2; shift; fi ;;
    --iugc)
      [[ $# -gt 1 && "$2" != --* ]] || die "--iugc needs a folder (images + train.csv/val.csv)"
      DATASET=iugc; SOURCE_DIR=$2; shift ;;
    --flagfile) [[ $# -gt 1 ]] || die "--flagfile needs a file"; FLAGFILE=$2; FLAGFILE_GIVEN=1; shift ;;
    --flagfile=*) FLAGFILE=${1#--flagfile=}; FLAGFILE_GIVEN=1 ;;
    --name) [[ $# -gt 1 ]] || die "--name needs a value"; NAME=$2; shift ;;
    --name=*) NAME=${1#--name=} ;;
    --rebuild) REBUILD=1 ;;
    -h|--help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) echo "run_training.sh: unknown argument $1" >&2; usage 2 ;;
  esac
  shift
done

case "$DATASET" in
  phantom)
    DATA_OUT=data/phantom
    BUILD_ARGS=(--source=phantom --phantom_train=256 --phantom_val=32 --out_dir="$DATA_OUT")
    DEFAULT_FLAGFILE=aop_tf/configs/demo.cfg ;;
  psfhs)
    SOURCE_DIR=${SOURCE_DIR:-${AOP_PSFHS_DIR:-$ROOT/../shared/data/psfhs}}
    [[ -d "$SOURCE_DIR" ]] ||
      die "PSFHS folder $SOURCE_DIR not found; pass --psfhs DIR or set AOP_PSFHS_DIR"
    DATA_OUT=data/psfhs
    BUILD_ARGS=(--source=masks --data_dir="$SOURCE_DIR" --out_dir="$DATA_OUT")
    DEFAULT_FLAGFILE=aop_tf/configs/cpu.cfg ;;
  iugc)
    [[ -d "$SOURCE_DIR" ]] || die "IUGC folder $SOURCE_DIR not found"
    DATA_OUT=data/iugc_$(basename "$(cd "$SOURCE_DIR" && pwd)")
    BUILD_ARGS=(--source=csv --data_dir="$SOURCE_DIR" --out_dir="$DATA_OUT")
    DEFAULT_FLAGFILE=aop_tf/configs/cpu.cfg
    if [[ -d "$SOURCE_DIR/unlabeled" ]]; then  # the unlabeled images: a mean teacher learns them
      BUILD_ARGS+=(--unlabeled_dir="$SOURCE_DIR/unlabeled")
      SEMI_ARGS=(--flagfile=aop_tf/configs/ssl.cfg)
    fi ;;
esac
FLAGFILE=${FLAGFILE:-$DEFAULT_FLAGFILE}
[[ -f "$FLAGFILE" ]] || die "flagfile $FLAGFILE not found"
CONFIG_NAME=$(basename "$FLAGFILE" .cfg)
NAME=${NAME:-${CONFIG_NAME}_${DATASET}}
RUN_DIR=runs/$NAME
EXPORT_DIR=saved_models/$NAME
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export AOP_PSFHS_DIR=${AOP_PSFHS_DIR:-$ROOT/../shared/data/psfhs}
START=$SECONDS
EXAMPLES=0  # the first run: the shipped model on the bundled real images before the demo
[[ $DATASET == phantom && -z "${FLAGFILE_GIVEN:-}" ]] && EXAMPLES=1
N=$((6 + EXAMPLES))
# TensorFlow's and LiteRT's start-up lines (oneDNN, absl, XNNPACK) hidden; our lines and real
# errors pass (AOP_VERBOSE=1 shows everything).
quiet() {
  if [[ -n "${AOP_VERBOSE:-}" ]]; then "$@"; return; fi
  "$@" 2> >(grep --line-buffered -vE '^(WARNING: All log messages before absl|[IW]0000 |I[0-9]{4} |INFO: Created TensorFlow Lite|INFO:tensorflow:Assets written)|rebuild TensorFlow with the appropriate compiler flags' >&2)
}

step "1/$N Python environment (.venv)"
PY=${PYTHON:-python3}
NEEDED="import aop_tf, data_prep, tensorflow, keras, tensorflow_datasets, ai_edge_litert"
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c "$NEEDED" 2>/dev/null; then
  echo "Setting up .venv (first run only; needs the network)..."
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[train]"
else
  echo "Using $(.venv/bin/python --version) in .venv"
fi
VPY="quiet .venv/bin/python"

if [[ $EXAMPLES == 1 ]]; then
  step "2/$N The shipped PSFHS model on the six example images (examples/psfhs, real, labelled)"
  OUT=runs/examples
  $VPY -m aop_tf.predict --model=psfhs --inputs=examples/psfhs --output=$OUT/predictions.csv \
    --overlay_dir=$OUT/overlays
  $VPY - $OUT/predictions.csv examples/psfhs/labels.csv <<'EOF'
import csv, os, sys
with open(sys.argv[2], newline="") as f:
  labelled = {row["Filename"]: float(row["AoP"]) for row in csv.DictReader(f)}
with open(sys.argv[1], newline="") as f:
  rows = list(csv.DictReader(f))
print(f"  {'image':<10} {'predicted AoP (90 % range)':>28} {'labelled':>9} {'error':>6}  flag")
for row in rows:
  name, aop = os.path.basename(row["filename"]), float(row["aop_deg"])
  label = labelled.get(name, float("nan"))
  if row.get("aop_low_deg"):
    shown = f"{aop:.1f} ({float(row['aop_low_deg']):.0f}-{float(row['aop_high_deg']):.0f}) deg"
  else:
    shown = f"{aop:.1f} +/- {float(row['aop_uncertainty_deg']):.1f} deg"
  flag = f"check: {row['flag_reason']}" if row["low_confidence"] == "1" else ""
  print(f"  {name:<10} {shown:>28} {label:>9.1f} {abs(aop - label):>6.1f}  {flag}")
print("  AoP: the angle at PS1 between the pubic symphysis and the tangent to the fetal head;"
      " > 120 deg\n  predicts a spontaneous vaginal delivery. The range: where the labelled AoP"
      " lay for 9 of 10\n  images like this one (calibrated on out-of-fold train images). 'check':"
      " the expected AoP\n  error is high enough to look again (set to catch half of the > 10 deg"
      " errors).\n  A research tool, not a medical device. See docs/models.md.")
EOF
fi

step "$((2 + EXAMPLES))/$N Dataset: $DATASET -> $DATA_OUT"
BUILT=$(find "$DATA_OUT" -name dataset_info.json -print -quit 2>/dev/null || true)
if [[ $REBUILD == 0 && -n "$BUILT" ]]; then
  echo "Using the dataset already in $DATA_OUT (--rebuild to rebuild it)."
else
  OVERWRITE=()
  [[ $REBUILD == 1 ]] && OVERWRITE=(--overwrite)
  $VPY -m data_prep.build "${BUILD_ARGS[@]}" "${OVERWRITE[@]}"
fi

step "$((3 + EXAMPLES))/$N Training: $FLAGFILE -> $RUN_DIR"
$VPY -m aop_tf.train --flagfile="$FLAGFILE" "${SEMI_ARGS[@]}" --data_dir="$DATA_OUT" \
  --model_dir="$RUN_DIR" "${TRAIN_ARGS[@]}"

step "$((4 + EXAMPLES))/$N Evaluation on the val split"
$VPY -m aop_tf.evaluate --model="$RUN_DIR" --data_dir="$DATA_OUT" --split=val --overlays=8 \
  --output_dir="$RUN_DIR/eval_val"

step "$((5 + EXAMPLES))/$N Export: SavedModel + TFLite -> $EXPORT_DIR"
$VPY -m aop_tf.export --model_dir="$RUN_DIR" --name="$NAME" --calibration_data="$DATA_OUT"
# The export measured the way it is served (its own in-graph resize and decoder).
$VPY -m aop_tf.evaluate --model="$EXPORT_DIR" --data_dir="$DATA_OUT" --split=val --overlays=0 \
  --output_dir="$RUN_DIR/eval_val_export"

step "$((6 + EXAMPLES))/$N Prediction on a few val images (as files)"
SAMPLES=$RUN_DIR/sample_images
rm -rf "$SAMPLES"
$VPY - "$DATA_OUT" "$SAMPLES" <<'EOF'
import os, sys
import tensorflow as tf
from aop_tf import data
data_dir, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
for example in data.load_split(data_dir, "val").take(6):
  name = os.path.splitext(os.path.basename(example["filename"].numpy().decode()))[0] + ".png"
  tf.io.write_file(os.path.join(out, name), tf.io.encode_png(example["image"]))
print(f"wrote {len(os.listdir(out))} images to {out}")
EOF
$VPY -m aop_tf.predict --model="$EXPORT_DIR" --inputs="$SAMPLES" \
  --output="$RUN_DIR/predictions.csv" --overlay_dir="$RUN_DIR/predict_overlays"
$VPY -m aop_tf.predict --model="$EXPORT_DIR/model.tflite" --inputs="$SAMPLES" \
  --output="$RUN_DIR/predictions_tflite.json"

step "Done in $((SECONDS - START)) s"
$VPY - "$RUN_DIR" <<'EOF'
import json, os, sys
run = sys.argv[1]
for label, sub in (("Keras checkpoint", "eval_val"), ("exported SavedModel", "eval_val_export")):
  path = os.path.join(run, sub, "report.json")
  if os.path.exists(path):
    with open(path) as f:
      r = json.load(f)
    mre = r.get("mre_px", {}).get("mean")
    aop = r.get("aop_error_deg", {}).get("mean")
    print(f"  val ({label}): {r.get('n_images')} images, MRE {mre:.2f} px, "
          f"AoP error {aop:.2f} deg" if mre is not None and aop is not None else
          f"  val ({label}): see {path}")
EOF
if [[ $EXAMPLES == 1 ]]; then
  # The shipped model's accuracy as its card states it.
  $VPY - <<'EOF'
from aop_tf import zoo
val = zoo.card("psfhs").get("val", {})
try:
  shipped = (f"the shipped model: {val['mre_512']['mean']:.1f} px in 512 space, "
             f"{val['aop_error_deg']['mean']:.1f} deg on PSFHS val, docs/models.md")
except (KeyError, TypeError):
  shipped = "the shipped model's accuracy on PSFHS val: docs/models.md"
print(f"""\
  The phantom demo: MRE is the mean distance between predicted and true landmarks, in pixels of
  the 256x256 synthetic images, and the AoP error the difference from the true angle. A few pixels
  show that data, training, export and prediction work; the phantom says nothing about accuracy on
  ultrasound ({shipped}).""")
EOF
  cat <<EOF
  Examples          : $ROOT/runs/examples/predictions.csv and overlays/ (shipped model, real images)
  Train on PSFHS    : ./run_training.sh --psfhs   (cpu.cfg, about 45 minutes)
EOF
fi
cat <<EOF
  Evaluation report : $ROOT/$RUN_DIR/eval_val/report.json (per-image CSV beside it)
  Overlays          : $ROOT/$RUN_DIR/eval_val/overlays/  and  $ROOT/$RUN_DIR/predict_overlays/
  Predictions       : $ROOT/$RUN_DIR/predictions.csv (SavedModel), predictions_tflite.json (TFLite)
  TensorBoard       : .venv/bin/tensorboard --logdir $ROOT/$RUN_DIR/logs
  Checkpoints       : $ROOT/$RUN_DIR/*.keras
  Export            : $ROOT/$EXPORT_DIR/ (SavedModel, model.tflite, export_info.json)
                      .venv/bin/saved_model_cli show --dir $EXPORT_DIR --all
EOF
