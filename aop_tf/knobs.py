"""What the typed specs share: the error they raise and the help text of their knobs.

`aop_tf.config.RunSpec` (training) and `data_prep.spec.BuildSpec` (data preparation) are frozen
dataclasses whose fields are knobs; the flags of their entry points are generated from the fields,
each flag's help being the field's line under `Attributes:` in its class docstring.
"""

import inspect


class ConfigError(ValueError):
  """A bad knob value, or a config.json that cannot be read; the message names the flag or field."""


def field_docs(cls):
  """{field name: its line (joined) in the `Attributes:` (or `Args:`) section of `cls`'s
  docstring}."""
  docs, name, inside = {}, None, False
  for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
    if line.strip() in ("Attributes:", "Args:"):
      inside = True
    elif inside and line.startswith("  ") and not line.startswith("    ") and ": " in line:
      name, text = line.strip().split(": ", 1)
      docs[name] = text
    elif inside and name and line.startswith("    "):
      docs[name] += " " + line.strip()
    elif inside and line.strip():
      inside = False
  return docs
