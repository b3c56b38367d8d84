"""Builds the TFDS dataset of one source: `python -m data_prep.build --source=csv|masks|phantom|images`.

Examples:
  python -m data_prep.build --source=phantom --phantom_train=64 --phantom_val=16
  python -m data_prep.build --source=csv --data_dir=../shared/data/psfhs
  python -m data_prep.build --source=masks            # PSFHS masks -> landmarks by the IUGC rule
  python -m data_prep.build --source=csv --data_dir=/data/iugc --csv=train:a.csv,val:b.csv \
      --unlabeled_dir=/data/iugc/unlabeled           # + an `unlabeled` split of images
  python -m data_prep.build --source=images --data_dir=/data/scans    # only an `unlabeled` split
  python -m data_prep.build --source=masks --labeled_list=benchmarks/ssl/psfhs_labeled_300.txt
      # scarce labels simulated: train rows not in the list become the `unlabeled` split

The dataset lands in `<out_dir>/aop_landmarks/1.0.0` (out_dir defaults to `data/<source>` in the
repo); that path is printed at the end, to pass to training. Bad inputs are skipped and counted
(`--strict` stops at the first one); the summary lists rows read, examples written and every
skipped input with its reason, per split (written + skipped = read).

Library use: `build_dataset("phantom", out_dir=tmp, phantom_counts={"train": 8, "val": 4})`.
"""

import collections
import itertools
import os
import shutil
import tempfile
import time

import numpy as np

from aop_tf import geometry
from aop_tf.io import images
from aop_tf.io import parallel
from aop_tf.io.records import SPLITS, UNLABELED, InputError
from data_prep import phantom, tfds_builder, unlabeled

SOURCES = ("csv", "masks", "phantom", "images")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSFHS_ENV = "AOP_PSFHS_DIR"
DEFAULT_PHANTOM_COUNTS = {"train": 64, "val": 16, "test": 0}


def default_psfhs_dir():
  """`$AOP_PSFHS_DIR`, else `../shared/data/psfhs` relative to the repo root."""
  return os.environ.get(PSFHS_ENV) or os.path.normpath(
      os.path.join(REPO_ROOT, "..", "shared", "data", "psfhs"))


def default_out_dir(source):
  """`data/<source>` under the repo root (ignored by git)."""
  return os.path.join(REPO_ROOT, "data", source)


def parse_split_map(text, what="--csv"):
  """`"train:a.csv,val:b.csv"` -> {"train": "a.csv", "val": "b.csv"}; dicts pass through."""
  if text is None or isinstance(text, dict):
    return dict(text or {})
  result = {}
  for item in filter(None, (part.strip() for part in str(text).split(","))):
    split, sep, value = item.partition(":")
    split = split.strip()
    if not sep or not value.strip():
      raise ValueError(f"{what}: item {item!r} is not SPLIT:VALUE (e.g. train:path/train.csv)")
    if split not in SPLITS:
      raise ValueError(f"{what}: unknown split {split!r} in {item!r}; use one of {SPLITS}")
    if split in result:
      raise ValueError(f"{what}: split {split!r} given twice")
    result[split] = value.strip()
  return result


def _split_limit(limit, split):
  if isinstance(limit, dict):
    return limit.get(split)
  return limit


class _Tally:
  """Per-split counts of rows read, examples written and skipped inputs with reasons."""

  def __init__(self):
    self.read = collections.Counter()
    self.written = collections.Counter()
    self.skipped = collections.defaultdict(collections.Counter)
    self.messages = []  # (split, message)

  def skip(self, split, error):
    self.skipped[split][error.reason] += 1
    self.messages.append((split, str(error)))

  def as_dict(self, splits):
    return {split: {"read": self.read[split], "written": self.written[split],
                    "skipped": dict(self.skipped[split])} for split in splits}


def _open_source(source, data_dir, csv, image_dir, split_spec, phantom_counts, phantom_size,
                 phantom_seed, csv_encoding="auto", unlabeled_dir=None, workers=1,
                 pseudo_labels=None, pseudo_image_dir=None):
  """-> ({split: (total rows, iterator of Record | InputError)}, description)."""
  seen = {}  # filename -> split, shared so that a file is used by one split only
  if source == "images":
    splits, description = {}, ""
  else:
    splits, description = _open_labeled(source, data_dir, csv, image_dir, split_spec,
                                        phantom_counts, phantom_size, phantom_seed, csv_encoding,
                                        seen, workers)
  if pseudo_labels:
    from aop_tf.io import labels  # pylint: disable=import-outside-toplevel
    rows = labels.read_rows(pseudo_labels, csv_encoding)
    folder = pseudo_image_dir or os.path.dirname(os.path.abspath(pseudo_labels))
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--pseudo_image_dir {folder} is not a folder")
    total, items = splits.get("train", (0, iter(())))
    # After the labeled train rows, so that a real label wins over a pseudo-label of its image.
    splits["train"] = (total + len(rows), itertools.chain(
        items, labels.iter_records(rows, folder, seen, "train", workers)))
    description += f" Pseudo-labels (kept rows) from {pseudo_labels}, images in {folder}."
  extra = data_dir if source == "images" else unlabeled_dir
  if extra:
    root, paths = unlabeled.find_images(extra)
    splits[UNLABELED] = (len(paths), unlabeled.iter_records(paths, root, seen, UNLABELED,
                                                            workers))
    description += f" Unlabeled images from {extra}."
  return splits, description.strip()


def _open_labeled(source, data_dir, csv, image_dir, split_spec, phantom_counts, phantom_size,
                  phantom_seed, csv_encoding, seen, workers):
  """`_open_source` of the labeled sources."""
  if source == "phantom":
    counts = dict(DEFAULT_PHANTOM_COUNTS if phantom_counts is None else phantom_counts)
    unknown = set(counts) - set(SPLITS)
    if unknown:
      raise ValueError(f"phantom_counts: unknown splits {sorted(unknown)}; use {SPLITS}")
    splits = {split: (int(counts[split]),
                      phantom.iter_records(SPLITS.index(split), counts[split], phantom_size,
                                           phantom_seed))
              for split in SPLITS if int(counts.get(split, 0) or 0) > 0}
    if not splits:
      raise ValueError("phantom: every split count is 0; ask for at least one example")
    return splits, (f"Synthetic phantom, {phantom_size}x{phantom_size}, seed {phantom_seed}; "
                    "landmarks from the ellipse geometry.")
  if source == "csv":
    from aop_tf.io import labels  # pylint: disable=import-outside-toplevel
    csv_paths = labels.find_split_csvs(data_dir, parse_split_map(csv))
    folder = image_dir or labels.default_image_dir(data_dir)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"--image_dir {folder} is not a folder")
    splits = {}
    for split, path in csv_paths.items():
      rows = labels.read_rows(path, csv_encoding)
      splits[split] = (len(rows), labels.iter_records(rows, folder, seen, split, workers))
    return splits, f"IUGC-format CSVs {sorted(csv_paths.values())}, images in {folder}."

  if source == "masks":
    from data_prep import masks  # pylint: disable=import-outside-toplevel
    names = masks.split_filenames(data_dir, parse_split_map(csv), split_spec, csv_encoding)
    splits = {split: (len(files), masks.iter_records(data_dir, files, seen, split, workers))
              for split, files in names.items() if files}
    return splits, (f"PSFHS-style masks in {data_dir}; landmarks from the masks by the IUGC rule "
                    "(data_prep.masks.landmarks_from_mask).")
  raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")


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


def build_dataset(source, data_dir=None, out_dir=None, *, csv=None, image_dir=None,
                  split_spec=None, phantom_counts=None, phantom_size=256, phantom_seed=0,
                  limit=None, strict=False, overwrite=False, verbose=True, csv_encoding="auto",
                  unlabeled_dir=None, labeled_list=None, workers=None, num_shards=None,
                  pseudo_labels=None, pseudo_image_dir=None):
  """Reads one source, validates every input and writes the TFDS dataset.

  Args:
    source: "csv" (IUGC CSVs + images), "masks" (PSFHS images + masks) or "phantom".
    data_dir: input folder (csv/masks); default `$AOP_PSFHS_DIR` or `../shared/data/psfhs`.
    out_dir: output root; default `data/<source>` in the repo.
    csv: {split: path} or "train:a.csv,val:b.csv"; default `<data_dir>/{train,val,test}.csv`.
      For masks they only give split membership (their Filename column).
    image_dir: csv source: folder the CSV file names are relative to; default `<data_dir>/images`
      if it exists, else `data_dir`.
    split_spec: masks source without split CSVs: e.g. "train:80,val:20" (see
      `data_prep.masks.split_filenames`).
    phantom_counts: {split: count}; default {"train": 64, "val": 16, "test": 0}.
    phantom_size, phantom_seed: phantom image side (pixels) and first seed.
    limit: at most this many rows read per split (int, or {split: int}); for tests.
    strict: raise at the first bad input instead of skipping it.
    overwrite: replace an existing dataset in `out_dir`; without it an existing one is an error.
    verbose: print progress and the summary.
    csv_encoding: encoding of the CSVs: "auto" (UTF-8, or UTF-16/32 by byte-order mark) or a
      Python codec name such as "cp1252".
    unlabeled_dir: a folder (recursively), glob or file of images without labels, written to the
      `unlabeled` split (source "images": `data_dir` itself).
    labeled_list: a file of train file names (one per line) to keep labeled; the other train
      examples go to the `unlabeled` split without landmarks or masks (scarce labels, simulated).
    workers: threads decoding and encoding images (default: the cores this process may use; 1:
      all in this thread). The output does not depend on it.
    num_shards: TFRecord files per split (default: TFDS's choice, files of 64 MiB to 1 GiB, so a
      large split is read in parallel; every split needs at least this many examples).
    pseudo_labels: a pseudo-label CSV (`aop_tf.predict --format=pseudo`) whose kept rows join the
      train split after the source's own (self-training; a real label of the same image wins).
    pseudo_image_dir: folder its file names are relative to (the one predict printed); default
      the CSV's folder.

  Returns:
    The dataset directory (str) holding `dataset_info.json`, for `tfds.builder_from_directory`.
  """
  start = time.time()
  if source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")
  if source == "images" and not data_dir:
    raise ValueError("--source=images needs --data_dir: a folder, glob or file of images")
  if pseudo_labels and labeled_list:
    raise ValueError("--pseudo_labels and --labeled_list both change the train split; use one")
  if source not in ("phantom", "images"):
    data_dir = data_dir or default_psfhs_dir()
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(
          f"data folder {data_dir} does not exist; pass --data_dir (or set ${PSFHS_ENV})")
  out_dir = os.path.abspath(out_dir or default_out_dir(source))
  target = _clear_target(out_dir, overwrite)

  keep = unlabeled.read_list(labeled_list) if labeled_list else None
  workers = parallel.default_workers() if workers is None else max(1, int(workers))
  splits, description = _open_source(source, data_dir, csv, image_dir, split_spec,
                                     phantom_counts, phantom_size, phantom_seed, csv_encoding,
                                     unlabeled_dir, workers, pseudo_labels, pseudo_image_dir)
  tally = _Tally()
  examples_by_split = {}
  for split, (total, items) in splits.items():
    split_limit = _split_limit(limit, split)
    if split_limit is not None:
      total = min(total, int(split_limit))
      items = itertools.islice(items, int(split_limit))
    if total == 0 and source == "csv":
      tally.messages.append((split, "its CSV has only a header line, no rows"))
    records = _read_split(f"{source}/{split}", split, items, total, tally, strict, verbose,
                          workers)
    if split == "train" and keep is not None:
      records = _split_off_unlabeled(records, keep, examples_by_split, tally, labeled_list)
    if not records:
      _log(verbose, f"[{source}/{split}] no usable examples; split left out")
      continue
    examples_by_split[split] = records
    tally.written[split] = len(records)

  if not examples_by_split:
    raise ValueError(f"{source}: no usable examples in any split; see the skipped inputs:\n" +
                     "\n".join(f"  {s}: {m}" for s, m in tally.messages[:20]))
  summary = {
      "source": source,
      "data_dir": os.path.abspath(data_dir) if data_dir else None,
      "labeled_list": os.path.abspath(labeled_list) if labeled_list else None,
      "pseudo_labels": os.path.abspath(pseudo_labels) if pseudo_labels else None,
      "splits": tally.as_dict(list(dict.fromkeys([*splits, *examples_by_split]))),
      "skipped_inputs": [{"split": s, "message": m} for s, m in tally.messages],
  }
  _log(verbose, f"[{source}] writing TFRecord shards to {target}")
  _write(out_dir, examples_by_split, description, summary, data_dir, num_shards)
  if verbose:
    _print_summary(source, summary, tally, time.time() - start, target)
  return target


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
  every = max(10, total // 10)
  split_start = time.time()
  for item, example in parallel.ordered_map(_encoded, items, workers):
    tally.read[split] += 1
    if isinstance(item, InputError):
      if strict:
        raise item
      tally.skip(split, item)
    elif item.landmarks is None:  # an unlabeled image: nothing to check beyond decoding
      unlabeled_examples.append(example)
    else:
      records.append((item.where or item.filename, item.landmarks, example))
    if tally.read[split] % every == 0 or tally.read[split] == total:
      _log(verbose, f"[{name}] {tally.read[split]}/{total} rows read, "
           f"{len(records) + len(unlabeled_examples)} ok, "
           f"{sum(tally.skipped[split].values())} skipped ({time.time() - split_start:.1f} s)")
  if not records:
    return unlabeled_examples
  # One vectorised AoP per split; NaN = coincident points, refused like any bad input.
  aops = geometry.aop_deg(np.stack([landmarks for _, landmarks, _ in records])).numpy()
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


def _print_summary(source, summary, tally, seconds, target):
  print(f"\nSummary: source={source}, {seconds:.1f} s")
  print(f"  {'split':<9} {'read':>6} {'written':>8} {'skipped':>8}  reasons")
  for split, row in summary["splits"].items():
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(row["skipped"].items())) or "-"
    print(f"  {split:<9} {row['read']:>6} {row['written']:>8} "
          f"{sum(row['skipped'].values()):>8}  {reasons}")
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
  f = flags.FLAGS
  counts = {"train": f.phantom_train, "val": f.phantom_val, "test": f.phantom_test}
  build_dataset(
      f.source, data_dir=f.data_dir, out_dir=f.out_dir, csv=f.csv, image_dir=f.image_dir,
      split_spec=f.split_spec, phantom_counts=counts, phantom_size=f.phantom_size,
      phantom_seed=f.phantom_seed, limit=f.limit, strict=f.strict, overwrite=f.overwrite,
      csv_encoding=f.csv_encoding, unlabeled_dir=f.unlabeled_dir, labeled_list=f.labeled_list,
      workers=f.workers, num_shards=f.num_shards, pseudo_labels=f.pseudo_labels,
      pseudo_image_dir=f.pseudo_image_dir)
  return 0


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_enum("source", "phantom", list(SOURCES), "Input kind.")
  flags.DEFINE_string("data_dir", None, "Input folder (csv/masks; images: a folder, glob or "
                      "file). Default: $AOP_PSFHS_DIR or ../shared/data/psfhs.")
  flags.DEFINE_string("out_dir", None, "Output root. Default: data/<source> in the repo.")
  flags.DEFINE_string("csv", None, "Split CSVs, e.g. train:a.csv,val:b.csv. Default: "
                      "train.csv/val.csv/test.csv found in --data_dir.")
  flags.DEFINE_string("image_dir", None, "csv source: folder the CSV file names are relative "
                      "to. Default: <data_dir>/images if present, else <data_dir>.")
  flags.DEFINE_string("split_spec", None, "masks source without split CSVs: weights of "
                      "contiguous 40-file blocks, e.g. train:80,val:20.")
  flags.DEFINE_integer("phantom_train", 64, "Phantom examples in train.")
  flags.DEFINE_integer("phantom_val", 16, "Phantom examples in val.")
  flags.DEFINE_integer("phantom_test", 0, "Phantom examples in test.")
  flags.DEFINE_integer("phantom_size", 256, "Phantom image side, pixels.")
  flags.DEFINE_integer("phantom_seed", 0, "First phantom seed.")
  flags.DEFINE_integer("limit", None, "Read at most this many rows per split (for quick tests).")
  flags.DEFINE_bool("strict", False, "Stop at the first bad input instead of skipping it.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing dataset in --out_dir.")
  flags.DEFINE_string("unlabeled_dir", None, "Images without labels (a folder, searched "
                      "recursively, a glob or a file) for the `unlabeled` split.")
  flags.DEFINE_string("labeled_list", None, "File of train file names (one per line) that keep "
                      "their labels; the other train images go to the `unlabeled` split without "
                      "landmarks or masks (to simulate scarce labels).")
  flags.DEFINE_string("pseudo_labels", None, "Pseudo-label CSV (python -m aop_tf.predict "
                      "--format=pseudo) whose kept rows join train after the source's own rows.")
  flags.DEFINE_string("pseudo_image_dir", None, "Folder the --pseudo_labels file names are "
                      "relative to (predict prints it). Default: the CSV's folder.")
  flags.DEFINE_integer("workers", None, "Threads decoding and encoding images (default: the "
                       "cores this process may use; 1: serial). The dataset does not depend on it.")
  flags.DEFINE_integer("num_shards", None, "TFRecord files per split (default: TFDS's choice, "
                       "64 MiB to 1 GiB each).")
  flags.DEFINE_string("csv_encoding", "auto", "Encoding of the CSVs: auto (UTF-8, or UTF-16/32 "
                      "by byte-order mark) or a Python codec name, e.g. cp1252.")


if __name__ == "__main__":
  from aop_tf import cli  # pylint: disable=import-outside-toplevel
  _define_flags()
  cli.run(main, "data_prep.build")
