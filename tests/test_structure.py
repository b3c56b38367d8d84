"""The shape of the code: layers without cycles, and functions a reader can take in at once.

Each module is imported alone, in a forked child of a process that has imported only the third-
party libraries, and what it pulls in of our packages is checked against the layers of
ARCHITECTURE.md:

  math      aop_tf (constants), geometry, heatmap, tangent, codec
  io        aop_tf.io.*: reading images, points, label CSVs         (may use: math)
  library   config, data, augment, model, losses, optim, task, ...   (may use: math, io)
  entry     train, evaluate, export, predict, ensemble               (may use all but entries)
  data_prep builds datasets                                          (may use: math, io)

so `aop_tf` never imports `data_prep` or `benchmarks`, and no entry point imports another.
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
MATH = {"aop_tf", "aop_tf.geometry", "aop_tf.heatmap", "aop_tf.tangent", "aop_tf.codec"}
ENTRY = {"aop_tf.train", "aop_tf.evaluate", "aop_tf.export", "aop_tf.predict", "aop_tf.ensemble"}
MAX_FUNCTION_LINES = 60  # of code, the docstring not counted


def _modules(package):
  paths = glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)
  names = []
  for path in sorted(paths):
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    names.append(name[:-len(".__init__")] if name.endswith(".__init__") else name)
  return names


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
  io = {m for m in pulled if m.startswith("aop_tf.io")}
  for name in MATH:
    assert pulled[name] <= MATH, (name, pulled[name] - MATH)
  for name in io:
    assert pulled[name] <= MATH | io, (name, pulled[name] - MATH - io)
  for name, mods in pulled.items():
    if name.startswith("data_prep"):
      assert {m for m in mods if m.startswith("aop_tf")} <= MATH | io, (name, mods - MATH - io)
    if name.startswith("aop_tf") and name not in ENTRY:
      assert not mods & ENTRY, (name, mods & ENTRY)
  for name in ENTRY:
    assert not pulled[name] & (ENTRY - {name}), (name, pulled[name] & ENTRY)


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
