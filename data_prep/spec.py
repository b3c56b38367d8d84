"""The build spec: every knob of `python -m data_prep.build`, typed, documented and checked once.

`BuildSpec` is a frozen dataclass; a field is a knob. The flags of `python -m data_prep.build` are
generated from it (`define_flags`, `from_flags`): one per field, named like the field, typed by
it, its help the field's line under `Attributes:` in the class docstring. Values are checked on
construction and a bad one raises `ConfigError` naming the flag (`--workers=0 must be > 0`).

This mirrors `aop_tf.config.RunSpec` (the run spec of training) on a small scale: that module is
in the library layer, which data prep may not import (ARCHITECTURE.md, layers); what both specs
share (`ConfigError`, the knobs' help text) lives in `aop_tf.knobs`.

Library use: `BuildSpec(source="images", data_dir="scans", frames="every:5")`, or
`make("phantom", phantom_counts={"train": 8}, out_dir=tmp)` with the keyword forms of
`data_prep.build.build_dataset`.
"""

import dataclasses
import typing
from typing import Optional

from absl import flags

from aop_tf.io import frames as frames_lib
from aop_tf.knobs import ConfigError, field_docs  # noqa: F401  (re-exported)
from aop_tf.io.records import SPLITS

SOURCES = ("csv", "masks", "phantom", "images")
PHANTOM_SPLITS = ("train", "val", "test")


def knob(default, *, choices=None, check=None, parse=None):
  """A spec field. `check`: a key of `_CHECKS`; `parse`: turns a library value (e.g. a dict) or a
  flag value into the stored one, raising ValueError naming the flag."""
  return dataclasses.field(default=default, metadata={
      "choices": choices, "check": check, "parse": parse})


_CHECKS = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "gray_level": (lambda v: 0 <= v <= 255, "must be in [0, 255] (gray levels)"),
    "phantom_side": (lambda v: v >= 32, "must be >= 32 pixels"),
}


def parse_split_map(text, what="--csv"):
  """`"train:a.csv,val:b.csv"` -> {"train": "a.csv", "val": "b.csv"}; dicts pass through."""
  if text is None or isinstance(text, (dict, tuple)):
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


def _parse_csv(value):
  """`--csv`: a SPLIT:PATH list or {split: path} -> ((split, path), ...) or None."""
  pairs = tuple(parse_split_map(value).items())
  return pairs or None


def _parse_limit(value):
  """`--limit`: an int, or (library) {split: int} -> ((split, int), ...)."""
  if not isinstance(value, dict):
    return value
  unknown = sorted(set(value) - set(SPLITS))
  if unknown:
    raise ValueError(f"--limit: unknown splits {unknown}; use {SPLITS}")
  return tuple((split, int(n)) for split, n in value.items())


def _parse_frames(value):
  frames_lib.parse_selection(value)  # ValueError naming --frames and the accepted forms
  return value


@dataclasses.dataclass(frozen=True)
class BuildSpec:
  """Every knob of a dataset build (`data_prep.build.build_dataset`).

  Attributes:
    source: Input kind: IUGC CSVs + images, PSFHS masks, the synthetic phantom, or images only
      (an `unlabeled` split).
    data_dir: Input folder (csv/masks; images: a folder, glob, file or @list of images, videos and
      DICOMs). Default: $AOP_PSFHS_DIR or ../shared/data/psfhs.
    out_dir: Output root. Default: data/<source> in the repo.
    csv: Split CSVs, e.g. train:a.csv,val:b.csv. Default: train.csv/val.csv/test.csv found in
      --data_dir. A Filename may name a frame: clip.mp4#12, exam.dcm#3.
    image_dir: csv source: folder the CSV file names are relative to. Default: <data_dir>/images
      if present, else <data_dir>.
    split_spec: masks source without split CSVs: weights of contiguous 40-file blocks, e.g.
      train:80,val:20.
    phantom_train: Phantom examples in train.
    phantom_val: Phantom examples in val.
    phantom_test: Phantom examples in test.
    phantom_size: Phantom image side, pixels.
    phantom_seed: First phantom seed.
    limit: Read at most this many rows (unlabeled: frames) per split (for quick tests).
    strict: Stop at the first bad input instead of skipping it.
    overwrite: Replace an existing dataset in --out_dir.
    verbose: Print progress lines and the summary.
    csv_encoding: Encoding of the CSVs: auto (UTF-8, or UTF-16/32 by byte-order mark) or a
      Python codec name, e.g. cp1252.
    unlabeled_dir: Images without labels for the `unlabeled` split: a folder (searched
      recursively), a glob, a file or an @list; videos and DICOMs give one image per selected
      frame, named clip.mp4#N.
    clip_dirs: A folder whose files are all numbered still images (frame_0001.png, ...) is one
      clip, its frames selected and checked for near-duplicates like a video's.
    frames: Frames of each clip (video, multi-frame DICOM, frame folder) that become unlabeled
      images: all, every:N (every N-th from the first), FIRST:LAST or FIRST:LAST:N (0-based,
      LAST included). Same syntax as predict --frames.
    drop_near_duplicates: Leave out near-duplicate frames of a clip (they are always counted and
      reported in the summary).
    near_duplicate_threshold: A selected frame is a near-duplicate when its mean absolute gray
      difference (0..255, on 64x64 area-downscaled copies) to the last non-duplicate frame of its
      clip is below this.
    labeled_list: File of train file names (one per line) that keep their labels; the other train
      images go to the `unlabeled` split without landmarks or masks (to simulate scarce labels).
    pseudo_labels: Pseudo-label CSV (python -m aop_tf.predict --format=pseudo) whose kept rows
      join train after the source's own rows.
    pseudo_image_dir: Folder the --pseudo_labels file names are relative to (predict prints it).
      Default: the CSV's folder.
    workers: Threads decoding and encoding images (default: the cores this process may use; 1:
      serial). The dataset does not depend on it.
    num_shards: TFRecord files per split (default: TFDS's choice, 64 MiB to 1 GiB each; every
      split needs at least this many examples).
  """
  source: str = knob("phantom", choices=SOURCES)
  data_dir: Optional[str] = knob(None)
  out_dir: Optional[str] = knob(None)
  csv: Optional[str] = knob(None, parse=_parse_csv)
  image_dir: Optional[str] = knob(None)
  split_spec: Optional[str] = knob(None)
  phantom_train: int = knob(64, check="non_negative")
  phantom_val: int = knob(16, check="non_negative")
  phantom_test: int = knob(0, check="non_negative")
  phantom_size: int = knob(256, check="phantom_side")
  phantom_seed: int = knob(0)
  limit: Optional[int] = knob(None, check="non_negative", parse=_parse_limit)
  strict: bool = knob(False)
  overwrite: bool = knob(False)
  verbose: bool = knob(True)
  csv_encoding: str = knob("auto")
  unlabeled_dir: Optional[str] = knob(None)
  clip_dirs: bool = knob(False)
  frames: str = knob("all", parse=_parse_frames)
  drop_near_duplicates: bool = knob(False)
  near_duplicate_threshold: float = knob(1.0, check="gray_level")
  labeled_list: Optional[str] = knob(None)
  pseudo_labels: Optional[str] = knob(None)
  pseudo_image_dir: Optional[str] = knob(None)
  workers: Optional[int] = knob(None, check="positive")
  num_shards: Optional[int] = knob(None, check="positive")

  def __post_init__(self):
    for field in dataclasses.fields(self):
      object.__setattr__(self, field.name, _checked(field, getattr(self, field.name)))
    self._check_between()

  def _check_between(self):
    """Checks between knobs; raises ConfigError."""
    if self.source == "images" and not self.data_dir:
      raise ConfigError("--source=images needs --data_dir: a folder, glob or file of images, "
                        "videos or DICOMs")
    if self.pseudo_labels and self.labeled_list:
      raise ConfigError("--pseudo_labels and --labeled_list both change the train split; use one")
    if self.source == "phantom" and not any(self.phantom_counts().values()):
      raise ConfigError("phantom: --phantom_train, --phantom_val and --phantom_test are all 0; "
                        "ask for at least one example")

  def replace(self, **changes):
    """A copy with knobs changed, named by their flags; unknown names are a ConfigError."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
    if unknown:
      raise ConfigError(f"Unknown build knobs {unknown}; see `python -m data_prep.build --help`.")
    return dataclasses.replace(self, **changes)

  def flags(self):
    """{flag name: value} of every knob (split maps as {split: value})."""
    values = dataclasses.asdict(self)
    for name in ("csv", "limit"):
      if isinstance(values[name], tuple):
        values[name] = dict(values[name])
    return values

  def csv_map(self):
    """{split: CSV path} of `--csv` (empty: the default CSVs)."""
    return dict(self.csv or ())

  def phantom_counts(self):
    """{split: phantom examples} of the three phantom knobs."""
    return {split: getattr(self, f"phantom_{split}") for split in PHANTOM_SPLITS}

  def split_limit(self, split):
    """Rows read at most in `split` (None: all)."""
    if isinstance(self.limit, tuple):
      return dict(self.limit).get(split)
    return self.limit

  def frame_selection(self):
    """The `frames.Selection` of `--frames`."""
    return frames_lib.parse_selection(self.frames)


def _kind(field):
  """The flag type of a field: str, bool, int or float (Optional[X] -> X)."""
  args = [a for a in typing.get_args(field.type) if a is not type(None)]
  return args[0] if args else field.type


def _checked(field, value):
  """`value` parsed, type-checked and checked against the field's knob metadata."""
  flag, kind = field.name, _kind(field)
  parse = field.metadata.get("parse")
  if parse is not None and value is not None:
    try:
      value = parse(value)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if value is None and field.default is None:
    return None
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if not isinstance(value, tuple) and (not isinstance(value, kind) or (
      kind is not bool and isinstance(value, bool))):
    raise ConfigError(f"--{flag}={value!r}: expected {kind.__name__}.")
  choices, check = field.metadata.get("choices"), field.metadata.get("check")
  if choices is not None and value not in choices:
    raise ConfigError(f"--{flag}={value!r} is not one of {', '.join(map(str, choices))}.")
  values = dict(value).values() if isinstance(value, tuple) else [value]
  if check is not None and not all(_CHECKS[check][0](v) for v in values):
    raise ConfigError(f"--{flag}={value!r} {_CHECKS[check][1]}.")
  return value


def make(spec=None, **knobs):
  """A `BuildSpec` from a spec or a source name, and knobs by flag name; also the library forms
  `phantom_counts={split: n}` (splits not named get 0), `csv={split: path}`, `limit={split: n}`."""
  if isinstance(spec, str):
    knobs.setdefault("source", spec)
    spec = None
  counts = knobs.pop("phantom_counts", None)
  if counts is not None:
    unknown = sorted(set(counts) - set(PHANTOM_SPLITS))
    if unknown:
      raise ConfigError(f"phantom_counts: unknown splits {unknown}; use {PHANTOM_SPLITS}")
    knobs.update({f"phantom_{split}": int(counts.get(split, 0) or 0) for split in PHANTOM_SPLITS})
  return (spec or _DEFAULT).replace(**knobs) if knobs else (spec or _DEFAULT)


_DEFAULT = BuildSpec()


# ------------------------------------------------------------------------------------------------
# Flags.


def define_flags(flag_values=flags.FLAGS):
  """Defines one absl flag per knob on `flag_values`, with the defaults of `BuildSpec()`."""
  docs = field_docs(BuildSpec)
  define = {bool: flags.DEFINE_boolean, str: flags.DEFINE_string, int: flags.DEFINE_integer,
            float: flags.DEFINE_float}
  for field in dataclasses.fields(BuildSpec):
    choices = field.metadata.get("choices")
    if choices:
      flags.DEFINE_enum(field.name, field.default, list(choices), docs[field.name],
                        flag_values=flag_values)
    else:
      define[_kind(field)](field.name, field.default, docs[field.name], flag_values=flag_values)


def from_flags(flag_values=flags.FLAGS):
  """The `BuildSpec` of parsed flags (those `define_flags` defined)."""
  return BuildSpec(**{f.name: flag_values[f.name].value for f in dataclasses.fields(BuildSpec)})
