"""Hostile inputs through the real command lines, with each run's peak memory (issue 17).

`python -m benchmarks.fuzz --stages=hostile` runs these (also beside the mutation stages):

  predict / data prep on eight 10000x10000 PNGs, on one 100-megapixel 16-bit RGBA PNG of under
  a megabyte and on one 100-megapixel RGB BMP (300 MB): peak resident memory at most `LIMIT_MIB`;
  predict / data prep on a folder holding a FIFO and a link to /dev/zero named like images, and a
  folder named like one: they end, skipping each with a reason;
  two trainings started together on one model directory: one trains, one is refused naming the
  other's PID; two predictions side by side: both answer.

Each case is a subprocess; its peak RSS is the kernel's (`wait4` ru_maxrss of that process,
forked from a small launcher so that the benchmark's own memory does not count).
"""

import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_MIB = 1536  # the README's bound on predict's and data prep's peak memory


def write_png(path, width, height, channels, depth, row):
  """Writes a PNG row by row (`row(y)` -> bytes of one row), never holding the whole image."""
  color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  compressor = zlib.compressobj(6)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)))
    for y in range(height):
      data = compressor.compress(b"\x00" + row(y))
      if data:
        f.write(chunk(b"IDAT", data))
    f.write(chunk(b"IDAT", compressor.flush()))
    f.write(chunk(b"IEND", b""))


def write_bmp(path, width, height, row):
  """Writes an uncompressed 24-bit BMP row by row (`row(y)` -> width * 3 bytes)."""
  stride = (width * 3 + 3) // 4 * 4
  with open(path, "wb") as f:
    f.write(b"BM" + struct.pack("<IHHI", 54 + stride * height, 0, 0, 54))
    f.write(struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, stride * height, 2835,
                        2835, 0, 0))
    for y in range(height):  # bottom-up, as BMP stores rows
      f.write(row(y).ljust(stride, b"\0"))


def make_inputs(work, side=10000):
  """The hostile input folders under `work` (huge images `side` pixels square): {name: folder}."""
  folders = {}
  big = os.path.join(work, "big8")
  os.makedirs(big, exist_ok=True)
  x = np.arange(side)
  for i in range(8):  # structured enough to be ~3 MB each
    write_png(os.path.join(big, f"big{i}.png"), side, side, 1, 8,
              lambda y, i=i: ((x * 7 + y * 3 + i * 11) % 251).astype(np.uint8).tobytes())
  folders["big8"] = big
  deep = os.path.join(work, "rgba16")
  os.makedirs(deep, exist_ok=True)
  row = np.full(side * 4, 30000, ">u2").tobytes()
  write_png(os.path.join(deep, "deep.png"), side, side, 4, 16, lambda y: row)
  folders["rgba16"] = deep
  flat = os.path.join(work, "bmp")
  os.makedirs(flat, exist_ok=True)
  write_bmp(os.path.join(flat, "flat.bmp"), side, side,
            lambda y: ((x[:, None] + y + np.arange(3)) % 256).astype(np.uint8).tobytes())
  folders["bmp"] = flat
  special = os.path.join(work, "special")
  os.makedirs(os.path.join(special, "dir.png"), exist_ok=True)
  write_png(os.path.join(special, "good.png"), 64, 48, 1, 8, lambda y: bytes(range(64)))
  for name, make in (("fifo.png", os.mkfifo),
                     ("zero.png", lambda p: os.symlink("/dev/zero", p))):
    if not os.path.lexists(os.path.join(special, name)):
      make(os.path.join(special, name))
  folders["special"] = special
  return folders


# Linux counts a forked child's peak memory from its parent's at the fork (ru_maxrss carries
# over through fork and exec), and this benchmark's own process holds TensorFlow. So each command
# is forked from this small launcher, whose memory is a Python interpreter's, and the launcher
# reports its child's peak.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
  os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
  f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(argv, timeout=900, log=None):
  """Runs a command; -> {"exit", "seconds", "peak_rss_mib"} (timeouts: exit "timeout")."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  peak_file = (log or os.path.join(REPO, "hostile")) + ".maxrss"
  with open(log or os.devnull, "w") as out:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, peak_file, *argv], stdout=out,
                            stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    try:
      code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, 9)
      proc.wait()
      return {"exit": "timeout", "seconds": timeout, "peak_rss_mib": None}
  seconds = round(time.perf_counter() - start, 1)
  with open(peak_file) as f:
    peak_kib = int(f.read())
  os.remove(peak_file)
  return {"exit": code, "seconds": seconds, "peak_rss_mib": round(peak_kib / 1024, 1)}


def _tail(path, lines=3):
  with open(path, errors="replace") as f:
    return [line.rstrip() for line in f.readlines()[-lines:]]


def cases(work, export_dir, phantom_dir, side=10000):
  """Every case: {name: result with `expected_exit` and `ok`}."""
  folders = make_inputs(work, side)
  py = sys.executable
  results = {}

  def case(name, argv, expect_exit=0, timeout=900, memory=True):
    log = os.path.join(work, f"{name}.log")
    result = run(argv, timeout, log)
    result["tail"] = _tail(log)
    result["ok"] = result["exit"] == expect_exit and (
        not memory or (result["peak_rss_mib"] or 0) <= LIMIT_MIB)
    results[name] = dict(result, expected_exit=expect_exit, memory_bounded=memory)
    print(f"[hostile] {name}: exit {result['exit']}, {result['seconds']} s, peak "
          f"{result['peak_rss_mib']} MiB -> {'ok' if result['ok'] else 'NOT OK'}", flush=True)

  def predict(folder, out, extra=()):
    return [py, "-m", "aop_tf.predict", f"--model={export_dir}", f"--inputs={folder}",
            f"--output={os.path.join(work, out)}", *extra]

  def prep(folder, out):
    return [py, "-m", "data_prep.build", "--source=images", f"--data_dir={folder}",
            f"--out_dir={os.path.join(work, out)}", "--overwrite"]

  big = f"{side}x{side}"
  case(f"predict_8_pngs_{big}", predict(folders["big8"], "big8.csv"))
  case(f"predict_{big}_16bit_rgba", predict(folders["rgba16"], "rgba16.csv"))
  case(f"predict_{big}_rgb_bmp_uncompressed", predict(folders["bmp"], "bmp.csv"))
  case(f"data_prep_8_pngs_{big}", prep(folders["big8"], "ds_big8"))
  case(f"data_prep_{big}_16bit_rgba", prep(folders["rgba16"], "ds_rgba16"))
  case(f"data_prep_{big}_rgb_bmp_uncompressed", prep(folders["bmp"], "ds_bmp"))
  case("predict_fifo_devzero_folder", predict(folders["special"], "special.csv"), timeout=300)
  case("data_prep_fifo_devzero_folder", prep(folders["special"], "ds_special"), timeout=300)
  concurrent(work, phantom_dir, export_dir, folders, results)
  return results


def concurrent(work, phantom_dir, export_dir, folders, results):
  """Two trainings on one model directory; two predictions side by side."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  train = [sys.executable, "-m", "aop_tf.train",
           f"--flagfile={os.path.join(REPO, 'aop_tf', 'configs', 'smoke.cfg')}",
           f"--data_dir={phantom_dir}", f"--model_dir={os.path.join(work, 'shared_run')}",
           "--epochs=2", "--verbose=0"]
  procs = [subprocess.Popen(train, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  codes = sorted(p.returncode for p in procs)
  refused = [o for o in outputs if "in use by another training run (PID" in o]
  results["train_twice_on_one_model_dir"] = {
      "exit": codes, "ok": codes == [0, 1] and len(refused) == 1,
      "tail": [line for o in refused for line in o.splitlines() if "error" in line][-1:]}
  predict = [[sys.executable, "-m", "aop_tf.predict", f"--model={export_dir}",
              f"--inputs={folders['special']}", f"--output={os.path.join(work, f'p{i}.csv')}"]
             for i in range(2)]
  procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) for argv in predict]
  codes = [p.wait(timeout=600) for p in procs]
  results["predict_twice_side_by_side"] = {"exit": codes, "ok": codes == [0, 0]}
  for name in ("train_twice_on_one_model_dir", "predict_twice_side_by_side"):
    print(f"[hostile] {name}: exit {results[name]['exit']} -> "
          f"{'ok' if results[name]['ok'] else 'NOT OK'}", flush=True)
