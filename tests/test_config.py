"""The run spec (aop_tf/config.py): flags generated from it, flagfiles, checks, config.json."""

import dataclasses
import json
import math
import os

from absl import flags
import pytest

from aop_tf import cli
from aop_tf import config
from aop_tf import model as model_lib
from aop_tf import model_dir as model_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "aop_tf", "configs")
FLAGFILES = ("paper", "cpu", "smoke", "baseline_cpu", "gpu")
# A config.json written by the code before the run spec (this repository at 982236b), verbatim.
FORMAT1 = os.path.join(REPO, "tests", "data", "config_format1.json")


def _parse(*args):
  flag_values = flags.FlagValues()
  config.define_flags(flag_values)
  flag_values(cli.flagfiles_first(["train", *args]))
  return config.from_flags(flag_values)


def _flagfile(name):
  return f"--flagfile={os.path.join(CONFIGS, name + '.cfg')}"


# --- flags -----------------------------------------------------------------------------------------


def test_one_flag_per_field_typed_and_documented():
  flag_values = flags.FlagValues()
  config.define_flags(flag_values)
  fields = [(cls.PREFIX + f.name, f) for cls in config.SECTIONS.values()
            for f in dataclasses.fields(cls)]
  assert len({name for name, _ in fields}) == len(fields)  # no two knobs share a flag
  assert {name for name, _ in fields} == set(flag_values)
  for name, field in fields:
    flag = flag_values[name]
    assert len(flag.help) > 10, name  # the field's docstring line
    assert flag.value == (list(f"{v:g}" for v in field.default) if field.type is tuple
                          else field.default), name
  assert flag_values["sigma_cells"].help.startswith("Gaussian target sigma")
  assert flag_values["norm"].parser.enum_values == list(config.NORMS)


@pytest.mark.parametrize("name", FLAGFILES)
def test_flagfiles_parse(name):
  spec = _parse(_flagfile(name))
  assert spec.data.data_dir == "data/phantom"
  assert spec.run.model_dir == f"runs/{name}"


def test_flagfiles_name_every_knob():
  knobs = set(config.RunSpec().flags()) - {"verbose"}
  for name in FLAGFILES:
    with open(os.path.join(CONFIGS, name + ".cfg")) as f:
      lines = f.read().splitlines()
    named = {line.split("=")[0][2:] for line in lines if line.startswith("--")}
    named |= {n[2:] for n in named if n.startswith("no") and n[2:] in knobs}
    # The augmentation knobs matter only where augmentation is on.
    expected = {k for k in knobs if not k.startswith("aug_") or "--augment" in lines}
    assert expected <= named, f"{name}.cfg misses {sorted(expected - named)}"


def test_paper_flagfile_is_the_paper_recipe():
  spec = _parse(_flagfile("paper"))
  assert spec.model_kwargs() == dict(model_lib.PAPER, norm="batch", seg_classes=0,
                                     mixed_precision=False, sync_batch_norm=False, dropout=0.0)
  assert (spec.codec.sigma_cells, spec.loss.loss, spec.codec.heatmap_scale) == (2.0, "mse", 1.0)
  optim = spec.optim
  assert (optim.optimizer, optim.learning_rate, optim.weight_decay) == ("adam", 1e-4, 1e-4)
  assert (optim.lr_schedule, optim.lr_step_epochs, optim.lr_step_factor) == ("step", 15, 0.5)
  assert (optim.epochs, spec.data.batch_size, spec.run.checkpoint_every) == (150, 4, 50)
  assert not spec.data.augment and spec.codec.decode_method == "argmax"


def test_cpu_flagfiles():
  base, cpu, paper = (_parse(_flagfile(n)) for n in ("baseline_cpu", "cpu", "paper"))
  cpu_model = dict(input_size=256, input_channels=1, base_filters=16, depth=4, heatmap_size=64,
                   decode_to_full=False, norm="batch", dropout=0.0)
  assert base.model_kwargs() == dict(cpu_model, seg_classes=0, mixed_precision=False,
                                     sync_batch_norm=False)
  assert cpu.model_kwargs() == dict(
      cpu_model, seg_classes=3, mixed_precision=True, sync_batch_norm=False,
      heatmap_activation="spatial_softmax",
      softmax_peak_scale=pytest.approx(2 * math.pi * cpu.codec.sigma_cells ** 2))
  assert base.run.max_train_minutes == cpu.run.max_train_minutes == 60
  assert (base.codec, base.loss, base.optim.learning_rate, base.data.batch_size) == (
      paper.codec, paper.loss, paper.optim.learning_rate, paper.data.batch_size)
  assert cpu.data.augment and cpu.codec.decode_method == "dark"
  assert cpu.augment.scale_range == (0.75, 1.3) and cpu.augment.erase_prob == 0.5
  assert cpu.optim.weight_decay == 0.05 and cpu.optim.epochs == 44


def test_gpu_flagfile_is_the_cpu_recipe_at_the_paper_scale():
  cpu, gpu = _parse(_flagfile("cpu")), _parse(_flagfile("gpu"))
  model = gpu.model_kwargs()
  assert (model["input_size"], model["base_filters"], model["depth"], model["heatmap_size"]) == (
      512, 64, 4, 128)
  assert model["sync_batch_norm"] and model["mixed_precision"] and gpu.run.jit_compile
  assert gpu.run.distribute == "mirrored" and gpu.optim.lr_scaling == "sqrt"
  assert not gpu.data.cache and gpu.data.shuffle_buffer > 0  # streams 31k images
  # The same Gaussian relative to the image, and the same loss, heads and augmentation.
  assert gpu.codec.sigma_cells / gpu.model.heatmap_size == cpu.codec.sigma_cells / 64
  assert (gpu.loss, gpu.augment) == (cpu.loss, cpu.augment)


def test_command_line_overrides_flagfile_wherever_it_stands():
  smoke = os.path.join(CONFIGS, "smoke.cfg")
  assert _parse("--learning_rate=0.5", f"--flagfile={smoke}").optim.learning_rate == 0.5
  assert _parse(f"--flagfile={smoke}", "--learning_rate=0.25").optim.learning_rate == 0.25
  assert _parse("--flagfile", smoke, "--noaugment").data.augment is False
  assert _parse(f"--flagfile={smoke}", "--aug_scale_range=0.5,2").augment.scale_range == (0.5, 2)


# --- checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,match", [
    (dict(batch_size=0), "--batch_size=0 must be > 0"),
    (dict(input_channels=2), "--input_channels=2 is not one of 1, 3"),
    (dict(input_size=100), "--input_size=100 must be a multiple of 2\\*\\*depth"),
    (dict(input_size=256, heatmap_size=48), "power-of-two multiple"),
    (dict(aug_affine_prob=2.0), "--aug_affine_prob=2.0 must be in \\[0, 1\\]"),
    (dict(aug_scale_range=(1.2, 0.8)), "--aug_scale_range"),
    (dict(aop_loss_weight=0.1), "--aop_loss_weight need --loss"),
    (dict(loss="softmax_ce", coord_loss_weight=-1.0), "--coord_loss_weight=-1.0"),
    (dict(loss="softmax_ce", heatmap_scale=4.0), "--heatmap_scale=4"),
    (dict(loss="weighted_mse", foreground_weight=0.0), "--foreground_weight > 0"),
    (dict(fh1_method="tangent"), "--seg_classes=3"),
    (dict(learning_rate="fast"), "--learning_rate='fast': expected float"),
    (dict(lerning_rate=0.1), "Unknown knobs \\['lerning_rate'\\]"),
])
def test_bad_values_name_the_flag(changes, match):
  with pytest.raises(config.ConfigError, match=match):
    config.RunSpec().replace(**changes)


def test_replace_and_flags_agree():
  spec = config.RunSpec().replace(input_size=64, aug_rotation_deg=5, seed=3)
  assert (spec.model.input_size, spec.augment.rotation_deg, spec.run.seed) == (64, 5.0, 3)
  assert isinstance(spec.augment.rotation_deg, float)
  assert config.from_flat(spec.flags()) == spec
  assert spec.heatmap_codec().input_size == 64


# --- config.json -----------------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
  spec = _parse(_flagfile("cpu"))
  text = json.dumps(config.to_json(spec))
  assert config.from_json(json.loads(text)) == spec
  model_dir_lib.write_spec(str(tmp_path), spec)
  assert model_dir_lib.read_spec(str(tmp_path)) == spec


def test_a_config_json_from_before_the_run_spec_still_loads():
  with open(FORMAT1) as f:
    old = json.load(f)
  spec = config.from_json(old, FORMAT1)
  # dropout came later: the old run reads at its default, 0.
  assert spec.model_kwargs() == dict(old["model"], sync_batch_norm=False, dropout=0.0)
  assert spec.heatmap_codec().fh1_method == old["decode"]["fh1_method"] == "tangent"
  assert spec.heatmap_codec().blur_sigma_cells == old["decode"]["blur_sigma_cells"]
  assert spec.augment.erase_prob == old["flags"]["augment_config"]["erase_prob"]
  assert spec.augment.scale_range == tuple(old["flags"]["augment_config"]["scale_range"])
  # A knob the old run lacks (its code predates the knob) reads at its default.
  del old["flags"]["mixed_precision"], old["flags"]["augment_config"]["noise_std"]
  spec = config.from_json(old, FORMAT1)
  assert spec.model.mixed_precision is False and spec.augment.noise_std == 3.0


@pytest.mark.parametrize("content,match", [
    ([1, 2], "config.json: expected a JSON object, got a list"),
    ({"model": {}}, "neither 'format' nor 'flags'"),
    ({"format": 2, "model": {"input_size": "big"}}, "--input_size='big': expected int"),
    ({"format": 2, "model": {"width": 3}}, "unknown field model.width"),
    ({"format": 2, "modle": {}}, "unexpected entry 'modle'"),
    ({"format": 3}, "format 3 is not 2"),
])
def test_a_bad_config_json_is_refused_naming_the_file_and_field(tmp_path, content, match):
  with open(tmp_path / "config.json", "w") as f:
    json.dump(content, f)
  with pytest.raises(config.ConfigError, match=match) as error:
    model_dir_lib.read_spec(str(tmp_path))
  assert str(tmp_path / "config.json") in str(error.value)


def test_resume_compares_the_knobs_that_matter():
  spec = config.RunSpec().replace(data_dir="d", model_dir="m")
  config.check_resumable(spec, spec.replace(epochs=9, learning_rate=0.5, data_dir="e"), "m")
  with pytest.raises(config.ConfigError, match="--batch_size: 4 -> 2"):
    config.check_resumable(spec, spec.replace(batch_size=2), "m")
  with pytest.raises(config.ConfigError, match="--aug_noise_std: 3.0 -> 5.0"):
    config.check_resumable(spec, spec.replace(aug_noise_std=5.0), "m")
