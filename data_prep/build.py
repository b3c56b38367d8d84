"""Builds a TFDS dataset: `python -m data_prep.build --source=csv|masks|phantom|images`.

Examples:
  python -m data_prep.build --source=phantom --phantom_train=64 --phantom_val=16
  python -m data_prep.build --source=csv --data_dir=../shared/data/psfhs
  python -m data_prep.build --source=masks            # PSFHS masks -> landmarks by the IUGC rule
  python -m data_prep.build --source=csv --data_dir=/data/iugc --csv=train:a.csv,val:b.csv \
      --unlabeled_dir=/data/iugc/unlabeled           # + an `unlabeled` split of images
  python -m data_prep.build --source=images --data_dir=/data/scans    # only an `unlabeled` split
  python -m data_prep.build --source=masks --labeled_list=benchmarks/ssl/psfhs_labeled_300.txt
      # scarce labels simulated: train rows not in the list become the `unlabeled` split
  python -m data_prep.build --source=images --data_dir=/data/recordings --frames=every:5 \
      --drop_near_duplicates --clip_dirs  # videos, DICOMs, frame folders: one image per frame

Every knob is a field of `data_prep.spec.BuildSpec`; the flags are generated from it.

The dataset lands in `<out_dir>/aop_landmarks/1.0.0` (out_dir defaults to `data/<source>` in the
repo); that path is printed at the end, to pass to training. Bad inputs are skipped and counted
(`--strict` stops at the first one); the summary lists rows read, examples written and every
skipped input with its reason, per split (written + skipped = read), and one line per clip:
frames read and near-duplicates, dropped or kept (`unlabeled.ClipStats`).

Library use: `build_dataset(spec.BuildSpec(source="images", data_dir="scans"))`, or with keywords
`build_dataset("phantom", out_dir=tmp, phantom_counts={"train": 8, "val": 4})`.
"""

import collections
import dataclasses
import itertools
import os
import shutil
import tempfile
import time

import numpy as np

from aop_tf import geometry
from aop_tf.io import frames
from aop_tf.io import images
from aop_tf.io import parallel
from aop_tf.io.records import SPLITS, UNLABELED, InputError
from data_prep import phantom, tfds_builder, unlabeled
from data_prep import spec as spec_lib

SOURCES = spec_lib.SOURCES
BuildSpec = spec_lib.BuildSpec
parse_split_map = spec_lib.parse_split_map
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSFHS_ENV = "AOP_PSFHS_DIR"
MAX_CLIP_LINES = 20  # clips listed one per line in the printed summary (metadata.json: all)


def default_psfhs_dir():
  """`$AOP_PSFHS_DIR`, else `../shared/data/psfhs` relative to the repo root."""
  return os.environ.get(PSFHS_ENV) or os.path.normpath(
      os.path.join(REPO_ROOT, "..", "shared", "data", "psfhs"))


def default_out_dir(source):
  """`data/<source>` under the repo root (ignored by git)."""
  return os.path.join(REPO_ROOT, "data", source)


class _Tally:
  """Per-split counts of rows read, examples written and skipped inputs with reasons."""

  def __init__(self):
    self.read = collections.Counter()
    self.written = collections.Counter()
    self.skipped = collections.defaultdict(collections.Counter)
    self.messages = []  # (split, message)

  def skip(self, split, error):
    self.skipped[split][error.reason] += 1
    if not isinstance(error, unlabeled.DroppedFrame):  # counted per clip in the summary instead
      self.messages.append((split, str(error)))

  def as_dict(self, splits):
    return {split: {"read": self.read[split], "written": self.written[split],
                    "skipped": dict(self.skipped[split])} for split in splits}


def _open_source(spec, data_dir, workers, clips):
  """-> ({split: (total rows or None if unknown, iterator of Record | InputError)}, description);
  `clips` receives the `unlabeled.ClipStats` of the clips as they are read."""
  seen = {}  # filename -> split, shared so that a file is used by one split only
  if spec.source == "images":
    splits, description = {}, ""
  else:
    splits, description = _open_labeled(spec, data_dir, seen, workers)
  if spec.pseudo_labels:
    from aop_tf.io import labels  # pylint: disable=import-outside-toplevel
    rows = labels.read_rows(spec.pseudo_labels, spec.csv_encoding)
    folder = spec.pseudo_image_dir or os.path.dirname(os.path.abspath(spec.pseudo_labels))
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--pseudo_image_dir {folder} is not a folder")
    total, items = splits.get("train", (0, iter(())))
    # After the labeled train rows, so that a real label wins over a pseudo-label of its image.
    splits["train"] = (total + len(rows), itertools.chain(
        items, labels.iter_records(rows, folder, seen, "train", workers)))
    description += f" Pseudo-labels (kept rows) from {spec.pseudo_labels}, images in {folder}."
  extra = data_dir if spec.source == "images" else spec.unlabeled_dir
  if extra:
    root, paths = unlabeled.find_sources(extra, spec.clip_dirs)
    options = unlabeled.ClipOptions(spec.frame_selection(), spec.drop_near_duplicates,
                                    spec.near_duplicate_threshold)
    # A clip's frame count is known once it is opened: the total of stills only is exact.
    stills = all(p.lower().endswith(frames.STILL_SUFFIXES) for p in paths)
    splits[UNLABELED] = (len(paths) if stills else None, unlabeled.iter_records(
        paths, root, seen, UNLABELED, workers, options, clips))
    description += f" Unlabeled images from {extra}"
    description += "." if stills else f" (clip frames: --frames={spec.frames})."
  return splits, description.strip()


def _open_labeled(spec, data_dir, seen, workers):
  """`_open_source` of the labeled sources."""
  if spec.source == "phantom":
    size, seed = spec.phantom_size, spec.phantom_seed
    splits = {split: (count, phantom.iter_records(SPLITS.index(split), count, size, seed))
              for split, count in spec.phantom_counts().items() if count > 0}
    return splits, (f"Synthetic phantom, {size}x{size}, seed {seed}; landmarks from the ellipse "
                    "geometry.")
  if spec.source == "csv":
    from aop_tf.io import labels  # pylint: disable=import-outside-toplevel
    csv_paths = labels.find_split_csvs(data_dir, spec.csv_map())
    folder = spec.image_dir or labels.default_image_dir(data_dir)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--image_dir {folder} is not a folder")
    splits = {}
    for split, path in csv_paths.items():
      rows = labels.read_rows(path, spec.csv_encoding)
      splits[split] = (len(rows), labels.iter_records(rows, folder, seen, split, workers))
    return splits, f"IUGC-format CSVs {sorted(csv_paths.values())}, images in {folder}."
  from data_prep import masks  # pylint: disable=import-outside-toplevel
  names = masks.split_filenames(data_dir, spec.csv_map(), spec.split_spec, spec.csv_encoding)
  splits = {split: (len(files), masks.iter_records(data_dir, files, seen, split, workers))
            for split, files in names.items() if files}
  return splits, (f"PSFHS-style masks in {data_dir}; landmarks from the masks by the IUGC rule "
                  "(data_prep.masks.landmarks_from_mask).")


def _clear_target(out_dir, overwrite):
  """The dataset folder under `out_dir`, removed if it exists and `overwrite` (else an error)."""
  target = tfds_builder.dataset_dir(out_dir)
  if os.path.exists(target):
    if not overwrite:
      raise FileExistsError(f"{target} already exists; pass --overwrite (overwrite=True) to "
                            "rebuild it or choose another --out_dir")
    shutil.rmtree(target)
  return target


def _log(verbose, message):
  if verbose:
    print(message, flush=True)


def build_dataset(spec="phantom", /, **knobs):
  """Reads one source, validates every input and writes the TFDS dataset.

  Args:
    spec: a `data_prep.spec.BuildSpec` (every knob, documented there), or a source name ("csv",
      "masks", "phantom", "images") whose other knobs come as keywords.
    **knobs: `BuildSpec` knobs by flag name, replacing the spec's, e.g. `out_dir=tmp,
      verbose=False`; also the library forms `phantom_counts={split: n}` (splits not named: 0),
      `csv={split: path}` and `limit={split: n}`.

  Returns:
    The dataset directory (str) holding `dataset_info.json`, for `tfds.builder_from_directory`.
  """
  spec = spec_lib.make(spec, **knobs)
  start = time.time()
  data_dir = spec.data_dir
  if spec.source not in ("phantom", "images"):
    data_dir = data_dir or default_psfhs_dir()
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(
          f"data folder {data_dir} does not exist; pass --data_dir (or set ${PSFHS_ENV})")
  out_dir = os.path.abspath(spec.out_dir or default_out_dir(spec.source))
  target = _clear_target(out_dir, spec.overwrite)
  workers = parallel.default_workers() if spec.workers is None else spec.workers
  clips = []
  splits, description = _open_source(spec, data_dir, workers, clips)
  tally = _Tally()
  examples_by_split = _read_splits(spec, splits, tally, workers)
  if not examples_by_split:
    raise ValueError(f"{spec.source}: no usable examples in any split; see the skipped inputs:\n"
                     + "\n".join(f"  {s}: {m}" for s, m in tally.messages[:20]))
  summary = {
      "source": spec.source,
      "data_dir": os.path.abspath(data_dir) if data_dir else None,
      "labeled_list": os.path.abspath(spec.labeled_list) if spec.labeled_list else None,
      "pseudo_labels": os.path.abspath(spec.pseudo_labels) if spec.pseudo_labels else None,
      "splits": tally.as_dict(list(dict.fromkeys([*splits, *examples_by_split]))),
      "skipped_inputs": [{"split": s, "message": m} for s, m in tally.messages],
      "clips": [dataclasses.asdict(c) for c in clips],
  }
  _log(spec.verbose, f"[{spec.source}] writing TFRecord shards to {target}")
  _write(out_dir, examples_by_split, description, summary, data_dir, spec.num_shards)
  if spec.verbose:
    _print_summary(spec.source, summary, tally, time.time() - start, target, clips)
  return target


def _read_splits(spec, splits, tally, workers):
  """{split: examples} of the opened `splits`, read and checked; empty splits left out."""
  keep = unlabeled.read_list(spec.labeled_list) if spec.labeled_list else None
  examples_by_split = {}
  for split, (total, items) in splits.items():
    split_limit = spec.split_limit(split)
    if split_limit is not None:
      total = split_limit if total is None else min(total, split_limit)
      items = itertools.islice(items, split_limit)
    if total == 0 and spec.source == "csv":
      tally.messages.append((split, "its CSV has only a header line, no rows"))
    records = _read_split(f"{spec.source}/{split}", split, items, total, tally, spec.strict,
                          spec.verbose, workers)
    if split == "train" and keep is not None:
      records = _split_off_unlabeled(records, keep, examples_by_split, tally, spec.labeled_list)
    if not records:
      _log(spec.verbose, f"[{spec.source}/{split}] no usable examples; split left out")
      continue
    examples_by_split[split] = records
    tally.written[split] = len(records)
  return examples_by_split


def _split_off_unlabeled(records, keep, examples_by_split, tally, list_path):
  """The train examples named in `keep`; the others join the `unlabeled` split, unlabeled."""
  names = {ex["filename"] for ex in records}
  missing = sorted(keep - names)
  if missing:
    raise ValueError(f"--labeled_list {list_path}: {len(missing)} names are not train examples "
                     f"(first: {missing[:3]}); list train file names, one per line")
  empty_png = images.encode_png(np.zeros((1, 1), np.uint8))
  labeled = [ex for ex in records if ex["filename"] in keep]
  moved = [unlabeled.relabel(ex, empty_png) for ex in records if ex["filename"] not in keep]
  examples_by_split.setdefault(UNLABELED, []).extend(moved)
  # Counted where they go, so that written + skipped = read holds in both splits.
  tally.skipped["train"]["to unlabeled (--labeled_list)"] += len(moved)
  tally.read[UNLABELED] += len(moved)
  tally.written[UNLABELED] += len(moved)
  return labeled


def _encoded(item):
  """`(item, its tfds_builder.encode_record dict)`; PNG-encoded as read, so raw pixels are not held
  for a whole split (None for a refused input)."""
  return item, None if isinstance(item, InputError) else tfds_builder.encode_record(item, np.nan)


def _read_split(name, split, items, total, tally, strict, verbose, workers=1):
  """The examples (`tfds_builder.encode_record` dicts with `aop_deg`) of one split's inputs,
  encoded on `workers` threads; refused inputs are counted in `tally` (or raised when
  `strict`)."""
  records, unlabeled_examples = [], []
  every = max(10, total // 10) if total is not None else 100  # None: frames of clips, uncounted
  split_start = time.time()

  def progress():
    _log(verbose, f"[{name}] {tally.read[split]}{'' if total is None else f'/{total}'} rows read, "
         f"{len(records) + len(unlabeled_examples)} ok, "
         f"{sum(tally.skipped[split].values())} skipped ({time.time() - split_start:.1f} s)")

  for item, example in parallel.ordered_map(_encoded, items, workers):
    tally.read[split] += 1
    if isinstance(item, InputError):
      if strict and not isinstance(item, unlabeled.DroppedFrame):
        raise item
      tally.skip(split, item)
    elif item.landmarks is None:  # an unlabeled image: nothing to check beyond decoding
      unlabeled_examples.append(example)
    else:
      records.append((item.where or item.filename, item.landmarks, example))
    if tally.read[split] % every == 0 or tally.read[split] == total:
      progress()
  if total is None and tally.read[split] % every:
    progress()
  if not records:
    return unlabeled_examples
  # One vectorised AoP per split; NaN = coincident points, refused like any bad input.
  aops = np.asarray(geometry.aop_deg(np.stack([landmarks for _, landmarks, _ in records])))
  kept = unlabeled_examples
  for (where, landmarks, example), aop in zip(records, aops):
    if np.isnan(aop):
      error = InputError(f"{where}: PS1 coincides with PS2 or FH1 {landmarks.tolist()}; the "
                         "AoP is undefined", "degenerate landmarks")
      if strict:
        raise error
      tally.skip(split, error)
    else:
      example["aop_deg"] = np.float32(aop)
      kept.append(example)
  return kept


def _write(out_dir, examples_by_split, description, summary, data_dir, num_shards=None):
  """Writes the TFRecord shards and metadata with `tfds_builder.AopLandmarks`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds_builder.AopLandmarks(
      data_dir=out_dir, examples_by_split=examples_by_split, description=description,
      metadata=summary)
  # Our own progress lines replace TFDS' progress bars; their global switch is restored after.
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  bars = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    with tempfile.TemporaryDirectory(prefix="aop_tfds_dl_") as download_dir:
      builder.download_and_prepare(
          download_dir=download_dir,
          download_config=tfds.download.DownloadConfig(manual_dir=data_dir or download_dir,
                                                       num_shards=num_shards))
  finally:
    tfds.display_progress_bar(bars)


def _print_summary(source, summary, tally, seconds, target, clips=()):
  print(f"\nSummary: source={source}, {seconds:.1f} s")
  print(f"  {'split':<9} {'read':>6} {'written':>8} {'skipped':>8}  reasons")
  for split, row in summary["splits"].items():
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(row["skipped"].items())) or "-"
    print(f"  {split:<9} {row['read']:>6} {row['written']:>8} "
          f"{sum(row['skipped'].values()):>8}  {reasons}")
  if clips:
    print(f"Clips ({len(clips)}; near-duplicate: mean absolute gray difference to the last "
          f"distinct frame, {unlabeled.NEAR_DUPLICATE_SIDE}x{unlabeled.NEAR_DUPLICATE_SIDE}):")
    for clip in clips[:MAX_CLIP_LINES]:
      print(f"  {clip.line()}")
    if len(clips) > MAX_CLIP_LINES:
      print(f"  ... {len(clips) - MAX_CLIP_LINES} more clips: {sum(c.frames_read for c in clips)} "
            f"frames read, {sum(c.near_duplicates for c in clips)} near-duplicates in all "
            "(every clip in metadata.json)")
  if tally.messages:
    print(f"Skipped inputs ({len(tally.messages)}):")
    for split, message in tally.messages:
      print(f"  [{split}] {message}")
  print(f"Dataset directory (pass to training): {target}")


def main(argv):
  """absl entry point (run through `aop_tf.cli.run`: errors are one line, exit 1)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  build_dataset(spec_lib.from_flags(flags.FLAGS))
  return 0


if __name__ == "__main__":
  from aop_tf import cli  # pylint: disable=import-outside-toplevel
  spec_lib.define_flags()
  cli.run(main, "data_prep.build")
