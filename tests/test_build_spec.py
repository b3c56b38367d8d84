"""The build spec (data_prep.spec.BuildSpec): flags generated from it, defaults, checks naming the
flag, and the keyword forms of build_dataset."""

import dataclasses

import pytest
from absl import flags

from data_prep import spec as spec_lib
from data_prep.spec import BuildSpec, ConfigError

# Every flag data_prep.build had before the spec, with its default: commands keep working.
OLD_FLAGS = {
    "source": "phantom", "data_dir": None, "out_dir": None, "csv": None, "image_dir": None,
    "split_spec": None, "phantom_train": 64, "phantom_val": 16, "phantom_test": 0,
    "phantom_size": 256, "phantom_seed": 0, "limit": None, "strict": False, "overwrite": False,
    "unlabeled_dir": None, "labeled_list": None, "pseudo_labels": None, "pseudo_image_dir": None,
    "workers": None, "num_shards": None, "csv_encoding": "auto"}
CLIP_FLAGS = {"clip_dirs": False, "frames": "all", "drop_near_duplicates": False,
              "near_duplicate_threshold": 1.0}


def _flag_values():
  values = flags.FlagValues()
  spec_lib.define_flags(values)
  return values


def test_one_flag_per_knob_with_its_default_and_docstring_help():
  values = _flag_values()
  fields = {f.name for f in dataclasses.fields(BuildSpec)}
  assert set(values) == fields
  for name, default in {**OLD_FLAGS, **CLIP_FLAGS, "verbose": True}.items():
    assert values[name].default == default, name
  docs = spec_lib.field_docs(BuildSpec)
  assert set(docs) == fields
  assert values["frames"].help == docs["frames"] and "every:N" in docs["frames"]
  assert values["source"].flag_type() == "string enum"
  assert values["near_duplicate_threshold"].flag_type() == "float"


def test_flags_make_the_spec():
  values = _flag_values()
  values(["prog", "--source=images", "--data_dir=scans", "--frames=every:5", "--clip_dirs",
          "--drop_near_duplicates", "--near_duplicate_threshold=2", "--csv=train:a.csv",
          "--limit=7"])
  spec = spec_lib.from_flags(values)
  assert spec == BuildSpec(source="images", data_dir="scans", frames="every:5", clip_dirs=True,
                           drop_near_duplicates=True, near_duplicate_threshold=2.0,
                           csv="train:a.csv", limit=7)
  assert spec.frame_selection().step == 5
  assert spec.csv_map() == {"train": "a.csv"} and spec.split_limit("val") == 7
  assert spec_lib.from_flags(_flag_values()) == BuildSpec()  # unparsed: the defaults


@pytest.mark.parametrize("knobs, match", [
    (dict(workers=0), r"--workers=0 must be > 0"),
    (dict(num_shards=-2), r"--num_shards=-2 must be > 0"),
    (dict(near_duplicate_threshold=300), r"--near_duplicate_threshold=300.0 must be in \[0, 255\]"),
    (dict(frames="every:0"), r"--frames='every:0': expected all, every:N"),
    (dict(frames="3:1"), r"--frames='3:1'"),
    (dict(csv="dev:a.csv"), r"--csv: unknown split 'dev'"),
    (dict(source="videos"), r"--source='videos' is not one of csv, masks, phantom, images"),
    (dict(phantom_size=16), r"--phantom_size=16 must be >= 32 pixels"),
    (dict(phantom_train=-1), r"--phantom_train=-1 must be >= 0"),
    (dict(limit={"train": -1}), r"--limit=.* must be >= 0"),
    (dict(strict="yes"), r"--strict='yes': expected bool"),
    (dict(source="images"), r"--source=images needs --data_dir"),
    (dict(labeled_list="a.txt", pseudo_labels="p.csv"), r"--pseudo_labels and --labeled_list"),
    (dict(phantom_train=0, phantom_val=0), r"--phantom_train, --phantom_val and --phantom_test"),
])
def test_a_bad_value_is_refused_naming_the_flag(knobs, match):
  with pytest.raises(ConfigError, match=match):
    BuildSpec(**knobs)


def test_keyword_forms_of_build_dataset():
  spec = spec_lib.make("phantom", phantom_counts={"train": 8}, limit={"train": 3},
                       csv={"val": "b.csv"}, out_dir="o")
  assert spec.phantom_counts() == {"train": 8, "val": 0, "test": 0}
  assert spec.split_limit("train") == 3 and spec.split_limit("val") is None
  assert spec.csv_map() == {"val": "b.csv"} and spec.out_dir == "o"
  assert spec.flags()["limit"] == {"train": 3}
  assert spec_lib.make(spec, source="images", data_dir="d").phantom_train == 8
  assert spec_lib.make(source="masks").source == "masks"
  with pytest.raises(ConfigError, match=r"Unknown build knobs \['stride'\]"):
    spec_lib.make("images", data_dir="d", stride=2)
  with pytest.raises(ConfigError, match="phantom_counts: unknown splits"):
    spec_lib.make("phantom", phantom_counts={"unlabeled": 2})


def test_the_command_line_refuses_a_bad_value_in_one_line(entry_points, tmp_path):
  code, _, stderr = entry_points.run("data_prep.build", [
      "--source=images", f"--data_dir={tmp_path}", "--near_duplicate_threshold=-1"])
  assert code == 1
  assert stderr.strip().splitlines()[-1] == (
      "data_prep.build: error: --near_duplicate_threshold=-1.0 must be in [0, 255] (gray levels).")
