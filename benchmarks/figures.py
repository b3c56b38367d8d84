"""Figures in Markdown read from the JSON they come from: check them, or fill them in again.

  python -m benchmarks.figures --check      # exit 1 listing every stale figure as file:line
  python -m benchmarks.figures --write      # refill every marked figure from its JSON

A figure is marked where it stands, between two HTML comments (GitHub does not render them):

  MRE <!--fig student.json student.mre_512_mean .2f-->13.78<!--/fig--> px in 512 space
  AoP error <!--fig card:psfhs val.aop_error_deg.mean .2f-->5.95<!--/fig--> deg

`<!--fig FILE KEY [SCALE] FORMAT-->`. FILE is a JSON file: `NAME.json` is
`benchmarks/results/NAME.json`, `card:NAME` the shipped model's
`aop_tf/models/NAME/model_card.json`, anything with a `/` a path from the repository root. KEY is
the path to the value, dict keys and list indices joined by dots
(`rows.0.reports.heatmap.mre_512.mean`; a key that itself holds a dot, like `sdr_512.2` or a file
name, is matched whole). SCALE, optional, is `*N` or `/N`, applied first (`/60` seconds to
minutes, `*100` a share as a percentage, `*-1` a sign). FORMAT is a Python format spec (`.2f`,
`.0f`, `d`). The text between the comments must be exactly what FORMAT makes of the value; a
marked figure stays on one line, after a word (a line that starts with `<!--` is raw HTML).
"""

import json
import os
import re

from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = re.compile(r"<!--fig (?P<spec>[^>\n]*?)-->(?P<text>[^\n]*?)<!--/fig-->")
OPEN = "<!--fig "

FLAGS = flags.FLAGS
flags.DEFINE_bool("check", False, "List every marked figure that differs from its JSON; exit 1 "
                  "if any does.")
flags.DEFINE_bool("write", False, "Refill every marked figure from its JSON.")
flags.DEFINE_list("files", ["README.md"], "Markdown files to read, relative to --root.")
flags.DEFINE_string("root", REPO_ROOT, "Repository root: the Markdown files and the JSON files "
                    "a mark names are relative to it.")


def lookup(data, key):
  """The value at `key` (dict keys and list indices joined by dots) in parsed JSON `data`.

  At a dict the longest run of parts that is a key wins, so a key holding dots matches whole.
  Raises KeyError naming the part that was not found.
  """
  parts = key.split(".")
  value, done = data, 0
  while done < len(parts):
    if isinstance(value, list):
      part = parts[done]
      if not part.isdigit() or int(part) >= len(value):
        raise KeyError(f"no item {part!r} in a list of {len(value)} at {'.'.join(parts[:done])!r}")
      value, done = value[int(part)], done + 1
      continue
    if not isinstance(value, dict):
      raise KeyError(f"{'.'.join(parts[:done])!r} holds {value!r}, not a dict or a list")
    for end in range(len(parts), done, -1):
      name = ".".join(parts[done:end])
      if name in value:
        value, done = value[name], end
        break
    else:
      raise KeyError(f"no key {parts[done]!r} at {'.'.join(parts[:done]) or 'the top'!r}")
  return value


def render(value, fmt, scale=None):
  """`value` as the README shows it: times or divided by `scale` (`*N`, `/N`), then `fmt`."""
  if scale:
    factor = float(scale[1:])
    value = value * factor if scale[0] == "*" else value / factor
  return format(value, fmt)


def parse_spec(spec):
  """`FILE KEY [SCALE] FORMAT` -> (file, key, scale or None, fmt); ValueError if malformed."""
  words = spec.split()
  if len(words) == 3:
    words.insert(2, None)
  if len(words) != 4 or (words[2] is not None and words[2][:1] not in "*/"):
    raise ValueError(f"a mark reads '<!--fig FILE KEY [*N|/N] FORMAT-->', not '<!--fig {spec}-->'")
  return tuple(words)


class Sources:
  """The JSON files marks name, each read once, relative to `root`."""

  def __init__(self, root):
    self.root = root
    self._loaded = {}

  def path(self, name):
    """The file a mark's FILE names, relative to the root."""
    if name.startswith("card:"):
      return f"aop_tf/models/{name[len('card:'):]}/model_card.json"
    return name if "/" in name else f"benchmarks/results/{name}"

  def value(self, name, key):
    path = self.path(name)
    if path not in self._loaded:
      full = os.path.join(self.root, path)
      if not os.path.isfile(full):
        raise KeyError(f"{path} not found (relative to {self.root})")
      with open(full) as f:
        self._loaded[path] = json.load(f)
    return lookup(self._loaded[path], key)


def refill(text, sources, name="<text>"):
  """Every marked figure of Markdown `text` filled from its JSON.

  Returns (new text, stale, broken), lists of lines `name:line: ...`: `stale` the figures whose
  text differed from their JSON (replaced in the new text), `broken` those that could not be
  filled (a bad mark, a missing file or key, a value FORMAT does not take; their text is kept).
  """
  stale, broken = [], []

  def fill(match):
    line = text.count("\n", 0, match.start()) + 1
    where = f"{name}:{line}: <!--fig {match['spec']}-->"
    try:
      source, key, scale, fmt = parse_spec(match["spec"])
      expected = render(sources.value(source, key), fmt, scale)
    except (KeyError, ValueError, TypeError, ZeroDivisionError) as e:
      broken.append(f"{where}: {e.args[0] if e.args else e}")
      return match[0]
    if match["text"] != expected:
      stale.append(f"{where}: the text says {match['text']!r}, the JSON {expected!r}")
    return f"<!--fig {match['spec']}-->{expected}<!--/fig-->"

  new = MARK.sub(fill, text)
  for number, line in enumerate(text.splitlines(), 1):
    if line.count(OPEN) != len(MARK.findall(line)):
      broken.append(f"{name}:{number}: a '{OPEN.strip()}' mark without its '<!--/fig-->' on the "
                    "same line")
    if line.lstrip().startswith(OPEN):  # Markdown would read the line as raw HTML
      broken.append(f"{name}:{number}: a line starts with a mark, which opens an HTML block on "
                    "GitHub; move the word before it onto this line")
  return new, stale, broken


def run(files, root, write=False):
  """Checks (with `write`, also refills) `files`; returns (stale, broken) as in `refill`."""
  sources, stale, broken = Sources(root), [], []
  for name in files:
    with open(os.path.join(root, name)) as f:
      text = f.read()
    new, more_stale, more_broken = refill(text, sources, name)
    stale, broken = stale + more_stale, broken + more_broken
    if write and new != text:
      with open(os.path.join(root, name), "w") as f:
        f.write(new)
  return stale, broken


def main(argv):
  del argv
  if FLAGS.check == FLAGS.write:
    raise app.UsageError("give exactly one of --check and --write")
  stale, broken = run(FLAGS.files, FLAGS.root, write=FLAGS.write)
  for problem in stale + broken:
    print(problem)
  files = ", ".join(FLAGS.files)
  if FLAGS.write:
    print(f"[figures] {files}: {len(stale)} figure(s) refilled, {len(broken)} could not be filled")
    return 1 if broken else 0
  print(f"[figures] {files}: {len(stale)} stale, {len(broken)} broken"
        + ("; `python -m benchmarks.figures --write` refills the stale ones" if stale else ""))
  return 1 if stale or broken else 0


if __name__ == "__main__":
  app.run(main)
