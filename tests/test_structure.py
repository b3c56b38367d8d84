"""The shape of the code: layers without cycles, and functions a reader can take in at once.

Every import of our packages, at the top of a module or inside a function (read with `ast`), is
checked against the layers of ARCHITECTURE.md:

  math      aop_tf (constants), knobs, geometry, heatmap, tangent, codec (may use: math)
  io        aop_tf.io.*: files, images, frames, clips, DICOM, labels (may use: math)
  library   config, data, model, predictor, zoo, viewer modules, ... (may use: math, io, library)
  entry     train, evaluate, export, predict, ensemble, viewer        (may use all but entries)
  pipeline  ship: builds shipped models by driving entry points       (may use all)
  data_prep builds datasets                                           (may use: math, io, cli)

so `aop_tf` never imports `data_prep` or `benchmarks`, no entry point imports another, and
nothing imports the pipeline. Each module is also imported alone, in a forked child of a process
that has imported only the third-party libraries, to check what it pulls in at import time; and
the modules that run a `.tflite` model import no TensorFlow at import time (the subprocess test
of tests/test_no_tensorflow.py runs them where TensorFlow cannot be imported at all).
"""

import ast
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ("aop_tf", "data_prep", "benchmarks")
MATH = {"aop_tf", "aop_tf.knobs", "aop_tf.geometry", "aop_tf.heatmap", "aop_tf.tangent", "aop_tf.codec"}
ENTRY = {"aop_tf.train", "aop_tf.evaluate", "aop_tf.export", "aop_tf.predict", "aop_tf.ensemble",
         "aop_tf.viewer.__main__"}
PIPELINE = {"aop_tf.ship"}
CLI = "aop_tf.cli"  # the command-line plumbing every entry point runs through, data_prep's too
# What predict, evaluate and the viewer run a .tflite model with: no TensorFlow at import time.
TENSORFLOW = ("tensorflow", "keras", "tensorflow_datasets")
INFERENCE = {"aop_tf", "aop_tf.geometry", "aop_tf.codec", "aop_tf.predict", "aop_tf.evaluate",
             "aop_tf.predictor", "aop_tf.sources", "aop_tf.zoo", "aop_tf.config", "aop_tf.pseudo",
             "aop_tf.metrics", "aop_tf.visualize", "aop_tf.results", "aop_tf.trace",
             "aop_tf.review", "aop_tf.quality", CLI}
MAX_FUNCTION_LINES = 60  # of code, the docstring not counted


def _modules(package):
  paths = glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)
  names = []
  for path in sorted(paths):
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    names.append(name[:-len(".__init__")] if name.endswith(".__init__") else name)
  return names



def _path(name):
  folder = os.path.join(REPO, *name.split("."))
  return os.path.join(folder, "__init__.py") if os.path.isdir(folder) else folder + ".py"


def _is_main_block(node):
  """`if __name__ == "__main__":`, whose imports run only when the module is the program."""
  test = getattr(node, "test", None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and
          isinstance(test.left, ast.Name) and test.left.id == "__name__")


def _imports(name, known):
  """`[(imported module, at import time)]` of every import statement in module `name`: the
  module itself for `import a.b` and `from a import b` where `a.b` is in `known`, else `a`."""
  package = name if os.path.basename(_path(name)) == "__init__.py" else name.rpartition(".")[0]
  found = []

  def visit(node, at_import):
    if isinstance(node, ast.Import):
      found.extend((alias.name, at_import) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package, `level - 1` packages up
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        found.append((full if full in known else base, at_import))
    inside = at_import and not isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not _is_main_block(node)
    for child in ast.iter_child_nodes(node):
      visit(child, inside)

  with open(_path(name)) as f:
    visit(ast.parse(f.read()), True)
  return found


@pytest.fixture(scope="module")
def imported():
  """{module: (everything of ours it imports anywhere, everything it imports at import time)}."""
  names = _modules("aop_tf") + _modules("data_prep")
  known = set(names)
  out = {}
  for name in names:
    pairs = _imports(name, known)
    ours = {m for m, _ in pairs if m.split(".")[0] in OURS} - {name}
    out[name] = (ours, {m for m, at_import in pairs if at_import} - {name})
  return out


def _layer(name):
  if name in MATH:
    return "math"
  if name.startswith("aop_tf.io"):
    return "io"
  if name in ENTRY:
    return "entry"
  if name in PIPELINE:
    return "pipeline"
  if name.startswith("data_prep"):
    return "data_prep"
  return "library"


# The layers each layer may import (data_prep: also itself).
ALLOWED = {"math": {"math"}, "io": {"math", "io"}, "library": {"math", "io", "library"},
           "entry": {"math", "io", "library"}, "pipeline": {"math", "io", "library", "entry"},
           "data_prep": {"math", "io", "data_prep"}}


def test_every_import_even_inside_functions_respects_the_layers(imported):
  wrong = []
  for name, (ours, _) in sorted(imported.items()):
    for module in sorted(ours):
      if module.split(".")[0] == "benchmarks" or (
          name.startswith("aop_tf") and module.startswith("data_prep")):
        wrong.append(f"{name} imports {module}")
      elif module in imported and _layer(module) not in ALLOWED[_layer(name)] and not (
          _layer(name) == "data_prep" and module == CLI):
        wrong.append(f"{name} ({_layer(name)}) imports {module} ({_layer(module)})")
  assert not wrong, wrong


def test_a_tflite_model_runs_without_importing_tensorflow(imported):
  """What predict, evaluate and the viewer import at import time, closed over our modules."""
  modules = INFERENCE | {m for m in imported if m.startswith(("aop_tf.io", "aop_tf.viewer"))}
  for name in sorted(modules):
    seen, todo, chain = set(), [name], {name: [name]}
    while todo:
      current = todo.pop()
      for module in imported[current][1]:
        root = module.split(".")[0]
        assert root not in TENSORFLOW, f"{' -> '.join(chain[current])} imports {module}"
        if module in imported and module not in seen:
          seen.add(module)
          chain[module] = chain[current] + [module]
          todo.append(module)


_PROBE = textwrap.dedent("""
    import json, os, sys
    import absl.app, absl.flags, cv2, keras, numpy, tensorflow, tensorflow_datasets, tqdm
    ours = ("aop_tf", "data_prep", "benchmarks")
    result = {}
    for name in json.loads(sys.argv[1]):
      read, write = os.pipe()
      pid = os.fork()
      if pid == 0:
        os.close(read)
        __import__(name)
        pulled = sorted(m for m in sys.modules if m.split(".")[0] in ours)
        os.write(write, json.dumps(pulled).encode())
        os._exit(0)
      os.close(write)
      data = b""
      while chunk := os.read(read, 1 << 16):
        data += chunk
      os.close(read)
      os.waitpid(pid, 0)
      result[name] = json.loads(data or b"null")
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def pulled():
  """{module: the modules of our packages that importing it alone loads}."""
  names = _modules("aop_tf") + _modules("data_prep")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(names)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  missing = [name for name, mods in result.items() if mods is None]
  assert not missing, f"could not import {missing}"
  return {name: set(mods) - {name} for name, mods in result.items()}


def test_aop_tf_never_imports_data_prep_or_benchmarks(pulled):
  for name, mods in pulled.items():
    if name.startswith("aop_tf"):
      assert not {m for m in mods if m.split(".")[0] in ("data_prep", "benchmarks")}, name


def test_each_layer_uses_only_the_layers_below(pulled):
  """The same layers for what importing each module alone loads (imports by other means too)."""
  wrong = []
  for name, mods in sorted(pulled.items()):
    layer = _layer(name)
    for module in sorted(mods):
      if _layer(module) not in ALLOWED[layer] and not (layer == "data_prep" and module == CLI):
        wrong.append(f"{name} ({layer}) loads {module} ({_layer(module)})")
  assert not wrong, wrong


def _code_lines(node):
  """Lines of a function without its docstring."""
  lines = node.end_lineno - node.lineno + 1
  first = node.body[0]
  if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
      first.value.value, str):
    lines -= first.end_lineno - first.lineno + 1
  return lines


def test_functions_fit_on_a_screen():
  long = []
  for name in _modules("aop_tf") + _modules("data_prep"):
    path = os.path.join(REPO, *name.split(".")) + (".py" if not os.path.isdir(
        os.path.join(REPO, *name.split("."))) else "/__init__.py")
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node) or ""
        if _code_lines(node) > MAX_FUNCTION_LINES and "Long because" not in doc:
          long.append(f"{name}.{node.name}: {_code_lines(node)} lines")
  assert not long, long
