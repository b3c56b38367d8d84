"""Small models for the tests: a run spec of a tiny U-Net and a training directory holding it."""

import os

import keras
import numpy as np

from aop_tf import config
from aop_tf import model as model_lib
from aop_tf import model_dir as model_dir_lib

# A 64x64 gray input, 4..16 channels, 16x16 heatmaps: builds and runs in well under a second.
TINY_FLAGS = dict(input_size=64, base_filters=4, depth=2, heatmap_size=16, sigma_cells=1.5,
                  decode_method="dark", decode_blur_sigma=1.0)


def tiny_spec(**flags):
  """The run spec of the tiny model, knobs changed by flag name."""
  return config.RunSpec().replace(**{**TINY_FLAGS, **flags})


def write_model_dir(folder, spec=None, seed=3, zero_heatmaps=False):
  """An untrained training directory (config.json + latest.keras) of `spec`; returns the model.

  `zero_heatmaps`: flat heatmaps, so every landmark decodes to the same cell (degenerate AoP).
  """
  spec = spec or tiny_spec()
  keras.utils.set_random_seed(seed)
  model = model_lib.build_unet(**spec.model_kwargs())
  if zero_heatmaps:
    head = model.get_layer("heatmap_logits")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
  os.makedirs(folder, exist_ok=True)
  model_dir_lib.save_model(model, model_dir_lib.checkpoint_path(str(folder), "latest"))
  model_dir_lib.write_spec(str(folder), spec)
  return model
