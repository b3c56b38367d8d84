"""aop_tf.zoo: shipped models by name, in predict and evaluate; paths always win over names."""

import os
import shutil

import numpy as np
import pytest

from aop_tf import export
from aop_tf import predictor as predictor_lib
from aop_tf import zoo
import helpers


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory):
  """A zoo folder holding one tiny model, 'tiny', as the shipped models are laid out."""
  root = tmp_path_factory.mktemp("zoo")
  run = str(root / "run")
  helpers.write_model_dir(run, helpers.tiny_spec(loss="softmax_ce"))
  exported = str(root / "export")
  export.export_model_dir(run, exported, quantize="dynamic")
  os.makedirs(root / "models" / "tiny")
  for name in ("model.tflite", "export_info.json"):
    shutil.copy(os.path.join(exported, name), root / "models" / "tiny")
  (root / "models" / "tiny" / zoo.CARD_FILE).write_text('{"name": "tiny"}')
  return str(root / "models")


def test_names_resolve_to_their_folders_and_paths_win(shipped_root, tmp_path, monkeypatch):
  assert zoo.names(shipped_root) == ["tiny"]
  assert zoo.resolve("tiny", shipped_root) == os.path.join(shipped_root, "tiny")
  assert zoo.card("tiny", shipped_root) == {"name": "tiny"}
  assert zoo.resolve("nothing", shipped_root) is None
  monkeypatch.chdir(tmp_path)
  os.makedirs("tiny")  # a folder of that name in the working directory is that folder
  assert zoo.resolve("tiny", shipped_root) == "tiny"


def test_predictor_loads_a_shipped_model_by_name(shipped_root, monkeypatch):
  monkeypatch.setattr(zoo, "ROOT", shipped_root)
  model = predictor_lib.load("tiny")
  assert isinstance(model, predictor_lib.TFLitePredictor)
  out = model.predict([np.full((70, 90, 1), 80, np.uint8)])
  assert out["landmarks"].shape == (1, 3, 2)


def test_an_unknown_name_lists_the_shipped_ones(shipped_root, monkeypatch):
  monkeypatch.setattr(zoo, "ROOT", shipped_root)
  with pytest.raises(FileNotFoundError, match=r"nor a shipped model \(tiny\)"):
    predictor_lib.load("psfhs_v0")
