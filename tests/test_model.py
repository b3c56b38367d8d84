"""The U-Net builder: the paper's Table 1 model and the CPU-sized variants."""

import keras
import numpy as np
import pytest

from aop_tf import config
from aop_tf import model as model_lib
from aop_tf import model_dir


def _shapes(model):
  return {name: tuple(t.shape) for name, t in model.output.items()}


def test_paper_model_size_and_output():
  model = model_lib.build_paper_unet()
  # Table 1 of the paper: ~31.0 M parameters; this builder gives exactly 31,049,539.
  assert model.count_params() == 31_049_539
  assert tuple(model.input.shape) == (None, 512, 512, 3)
  assert _shapes(model) == {"heatmaps": (None, 64, 64, 3)}


@pytest.mark.parametrize("input_size,heatmap_size,decode_to_full,n_up", [
    (256, 64, False, 2),  # the CPU model: decoder stops at 64
    (256, 64, True, 4),
    (128, 64, False, 3),
    (256, 128, False, 3),
])
def test_cpu_model_shapes(input_size, heatmap_size, decode_to_full, n_up):
  model = model_lib.build_unet(input_size=input_size, input_channels=1, base_filters=8, depth=4,
                               heatmap_size=heatmap_size, decode_to_full=decode_to_full)
  assert tuple(model.input.shape) == (None, input_size, input_size, 1)
  assert _shapes(model) == {"heatmaps": (None, heatmap_size, heatmap_size, 3)}
  assert sum(1 for layer in model.layers if layer.name.startswith("up")) == n_up


def test_cpu_model_parameter_count():
  # The CPU model of baseline_cpu.cfg / cpu.cfg (256 input, gray, base 16, decoder stops at 64).
  model = model_lib.build_unet(256, 1, 16, 4, 64, decode_to_full=False)
  assert model.count_params() == 1_900_179


def test_segmentation_head_and_forward_pass():
  model = model_lib.build_unet(64, 1, 4, 3, 16, decode_to_full=False, seg_classes=3, norm="group")
  assert _shapes(model) == {"heatmaps": (None, 16, 16, 3), "segmentation": (None, 16, 16, 3)}
  x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype("float32")
  out = model(x, training=False)
  assert out["heatmaps"].shape == (2, 16, 16, 3)
  np.testing.assert_allclose(np.sum(out["segmentation"], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=100, depth=4), "multiple of 2\\*\\*depth"),
    (dict(input_size=256, heatmap_size=96, decode_to_full=False), "power-of-two multiple"),
    (dict(input_size=256, heatmap_size=8, depth=4, decode_to_full=False), "too shallow"),
    (dict(norm="layer"), "Unknown norm"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    model_lib.build_unet(**kwargs)


def test_save_and_safe_load_round_trip(tmp_path):
  spec = config.RunSpec().replace(input_size=64, base_filters=4, depth=2, heatmap_size=16)
  model = model_lib.build_unet(**spec.model_kwargs())
  model_dir.write_spec(str(tmp_path), spec)
  model_dir.save_model(model, model_dir.checkpoint_path(str(tmp_path), "latest"))
  loaded, _ = model_dir.load_model(str(tmp_path))
  x = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 1)).astype("float32")
  np.testing.assert_allclose(loaded(x)["heatmaps"], model(x)["heatmaps"], atol=1e-6)


def test_mixed_precision_body_bfloat16_heads_float32_and_float32_copy(tmp_path):
  keras.utils.set_random_seed(0)  # the bfloat16 rounding below depends on the initial weights
  spec = config.RunSpec().replace(input_size=64, base_filters=4, depth=2, heatmap_size=32,
                                  seg_classes=3, loss="softmax_ce", mixed_precision=True)
  kwargs = spec.model_kwargs()
  model = model_lib.build_unet(**kwargs)
  policies = {layer.name: layer.dtype_policy.name for layer in model.layers
              if layer.name != "image"}
  assert policies["enc1_conv1"] == policies["dec1_conv2"] == "mixed_bfloat16"
  assert policies["heatmap_logits"] == policies["heatmap_softmax"] == "float32"
  assert policies["segmentation"] == "float32"
  x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 1)).astype("float32")
  out = model(x, training=False)
  assert {k: v.dtype.name for k, v in out.items()} == {"heatmaps": "float32",
                                                     "segmentation": "float32"}
  # Saved and loaded for inference it computes in float32 with the same weights, so its outputs
  # differ from the bfloat16 ones by rounding only (bfloat16 keeps ~3 significant digits).
  model_dir.write_spec(str(tmp_path), spec)
  model_dir.save_model(model, model_dir.checkpoint_path(str(tmp_path), "latest"))
  loaded, _ = model_dir.load_model(str(tmp_path))
  assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
  for a, b in zip(loaded.get_weights(), model.get_weights()):
    np.testing.assert_array_equal(a, b)
  ref = model_lib.float32_copy(model, kwargs)(x, training=False)
  for key in out:
    np.testing.assert_allclose(loaded(x, training=False)[key], ref[key], atol=1e-6)
    # bfloat16 keeps ~3 significant digits: most outputs agree closely, a few of the 6144 by more.
    diff = np.abs(np.asarray(out[key]) - np.asarray(ref[key]))
    assert diff.mean() < 0.01 and diff.max() < 0.1, (key, diff.mean(), diff.max())
  # Resuming keeps the training dtype.
  resumed, _ = model_dir.load_model(str(tmp_path), compile=True)
  assert resumed.get_layer("enc1_conv1").dtype_policy.name == "mixed_bfloat16"


def test_float32_copy_of_a_float32_model_is_the_model():
  model = model_lib.build_unet(64, 1, 4, 2, 16)
  assert model_lib.float32_copy(model, {"mixed_precision": False}) is model


def test_dropout_is_training_noise_only_and_adds_no_weights():
  kwargs = dict(input_size=64, base_filters=4, depth=3, heatmap_size=16, seg_classes=3)
  noisy = model_lib.build_unet(dropout=0.3, **kwargs)
  plain = model_lib.build_unet(**kwargs)
  assert [w.shape for w in noisy.weights] == [w.shape for w in plain.weights]
  decoders = config.decoder_blocks(64, 16, 3, False)
  assert sum("dropout" in layer.name for layer in noisy.layers) == 1 + decoders  # + bottleneck
  assert not any("dropout" in layer.name for layer in plain.layers)
  plain.set_weights(noisy.get_weights())
  x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
  np.testing.assert_allclose(noisy(x, training=False)["heatmaps"],
                             plain(x, training=False)["heatmaps"], atol=1e-6)
  assert np.abs(noisy(x, training=True)["heatmaps"] - plain(x, training=True)["heatmaps"]).max() > 0
