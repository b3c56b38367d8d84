"""Models shipped with the package, by name: `--model=psfhs` in `aop_tf.predict` and `evaluate`.

Each is a folder `aop_tf/models/<name>/` holding `model.tflite` and `export_info.json` (what
`aop_tf.export` writes beside them: the run spec, the codec) and `model_card.json` (training data,
recipe and the command that rebuilt it, val metrics, citation); `docs/models.md` is the card for
people. A `--model` that names an existing file or folder is that file or folder, never a shipped
model.
"""

import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
CARD_FILE = "model_card.json"


def names(root=None):
  """The shipped model names (folders of `root`, default `ROOT`, holding a model.tflite)."""
  root = root or ROOT
  if not os.path.isdir(root):
    return []
  return sorted(n for n in os.listdir(root)
                if os.path.isfile(os.path.join(root, n, "model.tflite")))


def resolve(model, root=None):
  """`model` itself if it exists as a path, else the folder of the shipped model of that name;
  None when it is neither."""
  if os.path.exists(model):
    return model
  if model in names(root):
    return os.path.join(root or ROOT, model)
  return None


def card(name, root=None):
  """The shipped model's `model_card.json` as a dict ({} if it has none)."""
  path = os.path.join(root or ROOT, name, CARD_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)
