"""Models shipped with the package, by name: `--model=psfhs` in `aop_tf.predict` and `evaluate`.

Each is a folder `aop_tf/models/<name>/` holding `model.tflite` and `export_info.json` (what
`aop_tf.export` writes beside them: the run spec, the codec) and `model_card.json` (training data,
recipe and the command that rebuilt it, val metrics, citation); `docs/models.md` is the card for
people. A `--model` that names an existing file or folder is that file or folder, never a shipped
model.

This is the registry only (plain files, no TensorFlow): building and measuring a shipped model is
`aop_tf.ship` (`python -m aop_tf.zoo` runs it).
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
  return card_of(os.path.join(root or ROOT, name))


def card_of(model):
  """The `model_card.json` beside a model (a shipped name, a folder or a .tflite file), or {}."""
  path = resolve(model) or model
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  path = os.path.join(folder, CARD_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def flag_min_confidence(model, default=0.3):
  """The confidence below which `predict` flags an image where the model has no fitted quality
  score (`quality_fit`): its card's `flag.min_confidence` (cards before session 12), else
  `default`."""
  value = card_of(model).get("flag", {}).get("min_confidence")
  return default if value is None else float(value)


def uncertainty_floor_deg(model):
  """The floor of the AoP uncertainty in the model's card (`ship.measure`), or None."""
  return card_of(model).get("uncertainty", {}).get("floor_deg")


def quality_fit(model):
  """The fitted quality score and interval of the model's card (its `quality` section, fitted by
  `benchmarks.quality --fit` on out-of-fold train predictions, copied in by `aop_tf.ship`), or
  None where the card has none."""
  fitted = card_of(model).get("quality")
  return fitted if fitted and fitted.get("coef") else None


if __name__ == "__main__":
  # `python -m aop_tf.zoo` (the command the README and benchmarks give) runs `aop_tf.ship`, which
  # builds and measures shipped models; the registry above imports nothing of it.
  import runpy  # pylint: disable=g-import-not-at-top
  runpy.run_module("aop_tf.ship", run_name="__main__", alter_sys=True)
