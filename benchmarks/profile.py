"""Resource profile of a command, as the IUGC paper reports its inference (Table 3, Figure 2).

  python -m benchmarks.profile --model=saved_models/cpu --inputs=../shared/data/psfhs/images \
      --output_dir=docs/profile [--name=predict] [--interval_s=0.1]
  python -m benchmarks.profile --flagfile=docs/profile/psfhs_val_inputs.flags \
      --model=saved_models/cpu/model.tflite --output_dir=docs/profile --name=predict_val_tflite
  python -m benchmarks.profile --output_dir=/tmp/prof --name=evaluate -- \
      python -m aop_tf.evaluate --model=runs/cpu --data_dir=data/psfhs

Runs the command after `--` (default: `python -m aop_tf.predict --model=... --inputs=...
--output=<output_dir>/<name>_predictions.csv`) while sampling its process tree with psutil every
`--interval_s`, and writes
  <output_dir>/<name>.json  the Table 3 figures (`table3`), the command, the machine and its load,
                            the last lines the command printed, and the sampled series
  <output_dir>/<name>.png   Figure 2: CPU utilisation and resident memory (and GPU) against time

Conventions: CPU utilisation is in percent of one core (psutil's convention: 200 % is both cores of
a 2-core machine), summed over the command and its child processes; RAM is the resident set size
(RSS) summed over them, MiB; AUCs are trapezoid integrals over the run (`%*s`, `MiB*s`). GPU
figures come from `nvidia-smi` (whole-device utilisation and memory) when it finds a GPU. The
profiler itself imports neither TensorFlow nor the model, so it adds nothing to the figures.
"""

import collections
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

MIB = 2.0 ** 20
# Paper (IUGC 2025 baseline, RTX 2080 Ti), inference over its 501 test images: Table 3 / Figure 2.
PAPER_TABLE3 = {"n_images": 501, "runtime_s": 17.66, "ms_per_image": 35.0,
                "ram_max_gb": 37.8, "gpu_mem_max_gb": 6.7,
                "device": "NVIDIA RTX 2080 Ti (GPU)"}
SERIES_KEYS = ("t_s", "cpu_percent", "rss_mib", "n_processes", "system_cpu_percent",
               "gpu_percent", "gpu_mem_mib")


def default_command(model, inputs, output, python=None, extra_args=()):
  """argv of `python -m aop_tf.predict` over `inputs` (files, folders, globs; str or list)."""
  if isinstance(inputs, (list, tuple)):
    inputs = ",".join(inputs)
  return [python or sys.executable, "-m", "aop_tf.predict", f"--model={model}",
          f"--inputs={inputs}", f"--output={output}", *extra_args]


class NvidiaSmiSampler:
  """Streams whole-GPU utilisation (%) and memory used (MiB) from `nvidia-smi -lms`.

  `latest()` -> (mean utilisation over GPUs, memory summed over GPUs) or (None, None) before the
  first reading. `available()` says whether `nvidia-smi` runs and lists a GPU.
  """

  QUERY = "index,utilization.gpu,memory.used"

  def __init__(self, interval_ms=100, executable="nvidia-smi"):
    self.executable = executable
    self.interval_ms = max(1, int(interval_ms))
    self._values = {}
    self._lock = threading.Lock()
    self._proc = None
    self._thread = None

  def available(self):
    path = shutil.which(self.executable)
    if not path:
      return False
    try:
      out = subprocess.run([path, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
      return False
    return out.returncode == 0 and "GPU" in out.stdout

  def start(self):
    self._proc = subprocess.Popen(
        [shutil.which(self.executable), f"--query-gpu={self.QUERY}",
         "--format=csv,noheader,nounits", f"-lms={self.interval_ms}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()
    return self

  def _read(self):
    for line in self._proc.stdout:
      parts = [p.strip() for p in line.split(",")]
      if len(parts) != 3:
        continue
      try:
        index, util, mem = parts[0], float(parts[1]), float(parts[2])
      except ValueError:  # "[N/A]" and the like
        continue
      with self._lock:
        self._values[index] = (util, mem)

  def latest(self):
    with self._lock:
      values = list(self._values.values())
    if not values:
      return None, None
    return float(np.mean([v[0] for v in values])), float(np.sum([v[1] for v in values]))

  def stop(self):
    if self._proc is not None and self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    if self._thread is not None:
      self._thread.join(timeout=5)


def _peak_rss_bytes(pid):
  """The kernel's high-water mark of a process's RSS since its exec (Linux VmHWM), or None."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          # An exited process (zombie) has no memory left and reads 0: no reading, not a peak.
          return int(line.split()[1]) * 1024 or None
  except (OSError, ValueError, IndexError):
    pass
  return None


class _TreeSampler:
  """CPU (from cpu_times deltas), RSS and peak RSS of a process and its descendants."""

  def __init__(self, pid):
    self.root = psutil.Process(pid)
    self._procs = {}  # pid -> (Process, cpu seconds at the last sample)

  def sample(self):
    """-> (cpu seconds used since the last sample, RSS bytes, number of live processes, sum of
    the processes' peak RSS (VmHWM, else RSS) bytes or None if no process had a VmHWM)."""
    try:
      procs = [self.root] + self.root.children(recursive=True)
    except psutil.Error:
      procs = [self.root]
    used_s, rss, alive, peak, has_hwm = 0.0, 0, 0, 0, False
    for proc in procs:
      try:
        with proc.oneshot():
          times = proc.cpu_times()
          mem = proc.memory_info().rss
      except psutil.Error:  # exited, zombie, or not ours to read
        continue
      total = times.user + times.system
      known = self._procs.get(proc.pid)
      if known is not None and known[0] == proc:
        used_s += max(0.0, total - known[1])
      else:
        used_s += total  # new since the last sample: all of its time falls in this interval
      self._procs[proc.pid] = (proc, total)
      rss += mem
      alive += 1
      hwm = _peak_rss_bytes(proc.pid)
      has_hwm = has_hwm or hwm is not None
      peak += max(hwm or 0, mem)
    return used_s, rss, alive, (peak if has_hwm else None)


def _reader(stream, sink, tail):
  """Copies the child's output to `sink` (bytes) as it comes and keeps the last lines."""
  for line in iter(stream.readline, b""):
    if sink is not None:
      sink.write(line)
      sink.flush()
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    tail.append(text.rsplit("\r", 1)[-1])  # progress bars: keep what was shown last
  stream.close()


def profile_command(argv, interval_s=0.1, gpu="auto", echo=True, env=None, tail_lines=40):
  """Runs `argv` to completion while sampling it.

  Args:
    argv: the command, a list of strings.
    interval_s: seconds between samples.
    gpu: "auto" (sample GPUs when `nvidia-smi` finds one), "off", or an `NvidiaSmiSampler`.
    echo: copy the command's output (stdout and stderr, merged) to our stdout.
    env: environment of the command (default: ours, with TF_CPP_MIN_LOG_LEVEL=2 unless set).
    tail_lines: how many of its last output lines to keep.

  Returns:
    dict: `command`, `returncode`, `runtime_s`, `interval_s`, `series` (lists of `SERIES_KEYS`;
    `t_s` seconds since the start, GPU lists None without a GPU), `ram_peak_hwm_mib` (the
    kernel's peak-RSS marks (VmHWM) summed over the tree, the largest sum seen: exact for one
    process, which sampling can miss between samples, and an upper bound for several; None where
    the system does not report it),
    `gpu` (None or the whole-device memory in use before the start, `gpu_mem_baseline_mib`),
    `output_tail`, `loadavg_before`, `loadavg_after`.
  """
  argv = [str(a) for a in argv]
  if env is None:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sampler_gpu = None
  if isinstance(gpu, NvidiaSmiSampler):
    sampler_gpu = gpu
  elif gpu == "auto":
    candidate = NvidiaSmiSampler(interval_ms=max(20, int(interval_s * 1000)))
    sampler_gpu = candidate if candidate.available() else None
  elif gpu != "off":
    raise ValueError(f"gpu={gpu!r}: expected 'auto', 'off' or an NvidiaSmiSampler.")
  gpu_info = None
  if sampler_gpu is not None:
    sampler_gpu.start()
    deadline = time.monotonic() + 5.0
    while sampler_gpu.latest()[1] is None and time.monotonic() < deadline:
      time.sleep(0.02)
    gpu_info = {"gpu_mem_baseline_mib": sampler_gpu.latest()[1]}

  series = {key: [] for key in SERIES_KEYS}
  tail = collections.deque(maxlen=tail_lines)
  loadavg_before = [round(v, 2) for v in os.getloadavg()]
  psutil.cpu_percent(None)  # starts the machine-wide counter
  try:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
  except OSError as e:
    if sampler_gpu is not None:
      sampler_gpu.stop()
    raise ValueError(f"Cannot run {shlex.join(argv)}: {e}") from None
  reader = threading.Thread(
      target=_reader, args=(proc.stdout, sys.stdout.buffer if echo else None, tail), daemon=True)
  reader.start()
  tree = _TreeSampler(proc.pid)
  cores = os.cpu_count() or 1
  hwm_peak_mib = None
  last_t = 0.0
  status = None
  try:
    while True:
      now = time.perf_counter() - start
      used_s, rss, alive, hwm = tree.sample()
      if hwm is not None:
        hwm_peak_mib = max(hwm_peak_mib or 0.0, hwm / MIB)
      gpu_util, gpu_mem = sampler_gpu.latest() if sampler_gpu is not None else (None, None)
      series["t_s"].append(now)
      # CPU times tick in 10 ms steps, so one 0.1 s interval can read above what the cores can do.
      busy = 100.0 * used_s / (now - last_t) if series["t_s"][1:] else 0.0
      series["cpu_percent"].append(min(busy, 100.0 * cores))
      series["rss_mib"].append(rss / MIB)
      series["n_processes"].append(alive)
      series["system_cpu_percent"].append(psutil.cpu_percent(None))
      series["gpu_percent"].append(gpu_util)
      series["gpu_mem_mib"].append(gpu_mem)
      last_t = now
      # (Not wait4's ru_maxrss: after fork and exec it also counts the parent's memory.)
      status = proc.poll()
      if status is not None:
        break
      time.sleep(max(0.0, interval_s - (time.perf_counter() - start - now)))
    runtime_s = time.perf_counter() - start
  except BaseException:
    proc.kill()
    proc.wait()
    raise
  finally:
    if sampler_gpu is not None:
      sampler_gpu.stop()
  reader.join(timeout=10)
  # The last sample saw the command exiting (no processes, no memory): close the curve there.
  series["t_s"][-1] = runtime_s
  return {
      "command": argv,
      "returncode": status,
      "runtime_s": runtime_s,
      "interval_s": interval_s,
      "series": series,
      "ram_peak_hwm_mib": hwm_peak_mib,
      "gpu": gpu_info,
      "output_tail": list(tail),
      "loadavg_before": loadavg_before,
      "loadavg_after": [round(v, 2) for v in os.getloadavg()],
  }


def _auc(t_s, values):
  t = np.asarray(t_s, np.float64)
  v = np.asarray(values, np.float64)
  if len(t) < 2:
    return 0.0
  return float(np.sum((v[1:] + v[:-1]) * np.diff(t)) / 2.0)


def summarize(result):
  """The paper's Table 3 figures of a `profile_command` result.

  Returns:
    dict: `runtime_s`; `cpu_max_percent`, `cpu_mean_percent`, `cpu_auc_percent_s` (percent of one
    core); `ram_max_mib` (the larger of the sampled tree maximum and the VmHWM peak),
    `ram_max_sampled_mib`, `ram_auc_mib_s`; `system_cpu_mean_percent` (whole machine, 100 = every
    core: the load the command competed with plus its own); and, with a GPU, `gpu_max_percent`,
    `gpu_auc_percent_s`, `gpu_mem_max_mib`, `gpu_mem_auc_mib_s` (whole device), else None.
  """
  s = result["series"]
  t = s["t_s"]
  cpu = np.asarray(s["cpu_percent"], np.float64)
  rss = np.asarray(s["rss_mib"], np.float64)
  sampled_max = float(rss.max()) if rss.size else 0.0
  peak = result.get("ram_peak_hwm_mib")
  table = {
      "runtime_s": round(result["runtime_s"], 3),
      "cpu_max_percent": round(float(cpu.max()) if cpu.size else 0.0, 1),
      "cpu_mean_percent": round(_auc(t, cpu) / max(result["runtime_s"], 1e-9), 1),
      "cpu_auc_percent_s": round(_auc(t, cpu), 1),
      "ram_max_mib": round(max(sampled_max, peak or 0.0), 1),
      "ram_max_sampled_mib": round(sampled_max, 1),
      "ram_auc_mib_s": round(_auc(t, rss), 1),
      "system_cpu_mean_percent": round(float(np.mean(s["system_cpu_percent"][1:] or [0.0])), 1),
  }
  gpu_util = [v for v in s["gpu_percent"] if v is not None]
  gpu_mem = [v for v in s["gpu_mem_mib"] if v is not None]
  has_gpu = bool(gpu_util) and len(gpu_util) == len(t)
  table.update({
      "gpu_max_percent": round(max(gpu_util), 1) if has_gpu else None,
      "gpu_auc_percent_s": round(_auc(t, gpu_util), 1) if has_gpu else None,
      "gpu_mem_max_mib": round(max(gpu_mem), 1) if has_gpu else None,
      "gpu_mem_auc_mib_s": round(_auc(t, gpu_mem), 1) if has_gpu else None,
  })
  return table


def machine_info():
  """CPU model and count, total RAM, platform."""
  model = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu_model": model, "cpu_count": os.cpu_count(),
          "ram_total_mib": round(psutil.virtual_memory().total / MIB),
          "platform": platform.platform(), "python": platform.python_version()}


def plot(result, table, path, title=None):
  """Figure 2 of the paper for one run: CPU utilisation and RAM (and GPU) against time -> PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  s = result["series"]
  t = np.asarray(s["t_s"])
  has_gpu = table.get("gpu_max_percent") is not None
  rows = 4 if has_gpu else 2
  fig, axes = plt.subplots(rows, 1, figsize=(8, 2.3 * rows), sharex=True, squeeze=False)
  axes = axes[:, 0]
  cores = os.cpu_count() or 1
  ax = axes[0]
  ax.plot(t, s["cpu_percent"], color="tab:blue", lw=1.2, label="command (process tree)")
  ax.plot(t, np.asarray(s["system_cpu_percent"], np.float64) * cores, color="tab:gray", lw=0.8,
          alpha=0.7, label="whole machine (everything running)")
  ax.axhline(100 * cores, color="k", lw=0.6, ls=":")
  ax.set_ylabel("CPU (% of a core)")
  ax.set_ylim(0, 100 * cores * 1.1)
  ax.legend(loc="upper right", fontsize=7)
  ax.set_title(f"CPU: max {table['cpu_max_percent']:.0f} %, AUC {table['cpu_auc_percent_s']:.0f} "
               "%*s", fontsize=9)
  ax = axes[1]
  ax.plot(t, s["rss_mib"], color="tab:red", lw=1.2)
  ax.fill_between(t, s["rss_mib"], color="tab:red", alpha=0.15)
  ax.set_ylabel("RAM (RSS, MiB)")
  ax.set_title(f"RAM: max {table['ram_max_mib']:.0f} MiB, AUC {table['ram_auc_mib_s']:.0f} MiB*s",
               fontsize=9)
  if has_gpu:
    ax = axes[2]
    ax.plot(t, s["gpu_percent"], color="tab:green", lw=1.2)
    ax.set_ylabel("GPU (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"GPU: max {table['gpu_max_percent']:.0f} %, AUC "
                 f"{table['gpu_auc_percent_s']:.0f} %*s", fontsize=9)
    ax = axes[3]
    ax.plot(t, s["gpu_mem_mib"], color="tab:purple", lw=1.2)
    ax.set_ylabel("GPU memory (MiB)")
    ax.set_title(f"GPU memory (whole device): max {table['gpu_mem_max_mib']:.0f} MiB", fontsize=9)
  axes[-1].set_xlabel("time (s)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.set_xlim(0, max(float(t[-1]) if t.size else 1.0, 1e-3))
  fig.suptitle(title or f"{short_command(result['command'])}: {table['runtime_s']:.1f} s",
               fontsize=10)
  fig.tight_layout()
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def short_command(argv, width=90):
  """One line naming the command: `python -m aop_tf.predict --model=... ...`, cut to `width`."""
  argv = list(argv)
  if argv and os.path.basename(argv[0]).startswith("python"):
    argv[0] = "python"
  text = " ".join(shlex.join(argv).split())
  return text if len(text) <= width else text[:width - 3] + "..."


def _rounded(values, digits):
  return [None if v is None else round(float(v), digits) for v in values]


def report(result, table, note=None):
  """The JSON-able record of one profile: Table 3, command, machine, load, output, series."""
  s = result["series"]
  return {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": shlex.join(result["command"]),
      "returncode": result["returncode"],
      "note": note,
      "table3": table,
      "units": {"cpu": "percent of one core (100 x cores = the whole machine), summed over the "
                       "process tree", "ram": "resident set size, MiB, summed over the process "
                "tree", "auc": "trapezoid integral over the run", "gpu": "whole device"},
      "paper_table3": PAPER_TABLE3,
      "machine": dict(machine_info(), loadavg_before=result["loadavg_before"],
                      loadavg_after=result["loadavg_after"]),
      "gpu": result["gpu"],
      "ram_peak_hwm_mib": (None if result["ram_peak_hwm_mib"] is None
                           else round(result["ram_peak_hwm_mib"], 1)),
      "interval_s": result["interval_s"],
      "output_tail": result["output_tail"],
      "series": {"t_s": _rounded(s["t_s"], 3), "cpu_percent": _rounded(s["cpu_percent"], 1),
                 "rss_mib": _rounded(s["rss_mib"], 1), "n_processes": s["n_processes"],
                 "system_cpu_percent": _rounded(s["system_cpu_percent"], 1),
                 "gpu_percent": _rounded(s["gpu_percent"], 1),
                 "gpu_mem_mib": _rounded(s["gpu_mem_mib"], 1)},
  }


def write_outputs(record, result, output_dir, name, title=None):
  """Writes `<output_dir>/<name>.json` and `<name>.png`; returns their paths."""
  os.makedirs(output_dir, exist_ok=True)
  json_path = os.path.join(output_dir, f"{name}.json")
  png_path = os.path.join(output_dir, f"{name}.png")
  tmp = json_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
    f.write("\n")
  os.replace(tmp, json_path)
  plot(result, record["table3"], png_path, title)
  return json_path, png_path


def format_table(table):
  """One line per Table 3 figure, for the console."""
  lines = [f"runtime {table['runtime_s']:.2f} s",
           f"CPU max {table['cpu_max_percent']:.0f} % of a core, mean "
           f"{table['cpu_mean_percent']:.0f} %, AUC {table['cpu_auc_percent_s']:.0f} %*s "
           f"(machine busy {table['system_cpu_mean_percent']:.0f} % on average)",
           f"RAM max {table['ram_max_mib']:.0f} MiB, AUC {table['ram_auc_mib_s']:.0f} MiB*s"]
  if table.get("gpu_max_percent") is not None:
    lines.append(f"GPU max {table['gpu_max_percent']:.0f} %, AUC {table['gpu_auc_percent_s']:.0f} "
                 f"%*s; GPU memory max {table['gpu_mem_max_mib']:.0f} MiB")
  else:
    lines.append("GPU: none found (nvidia-smi)")
  return lines


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("model", None, "Default command: the export to predict with "
                      "(saved_models/<name> or a .tflite file).")
  flags.DEFINE_list("inputs", None, "Default command: image files, folders or globs.")
  flags.DEFINE_string("predict_output", None, "Default command: its --output (default "
                      "<output_dir>/<name>_predictions.csv).")
  flags.DEFINE_list("predict_args", [], "Default command: more aop_tf.predict flags, e.g. "
                    "--predict_args=--batch_size=16,--num_workers=2.")
  flags.DEFINE_string("output_dir", "profile", "Folder for <name>.json and <name>.png.")
  flags.DEFINE_string("name", "profile", "File name stem of the outputs.")
  flags.DEFINE_float("interval_s", 0.1, "Seconds between samples.")
  flags.DEFINE_enum("gpu", "auto", ["auto", "off"], "Sample GPUs with nvidia-smi (auto: when "
                    "it finds one).")
  flags.DEFINE_string("note", None, "Free text stored in the JSON (e.g. what else ran).")
  flags.DEFINE_string("title", None, "Plot title (default: the command and its runtime).")


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  flag_values = flags.FLAGS
  command = list(argv[1:])
  if not command:
    if not flag_values.model or not flag_values.inputs:
      print("profile: error: give a command after `--`, or --model and --inputs to profile "
            "`python -m aop_tf.predict`.", file=sys.stderr)
      return 2
    output = flag_values.predict_output or os.path.join(flag_values.output_dir,
                                                         f"{flag_values.name}_predictions.csv")
    command = default_command(flag_values.model, flag_values.inputs, output,
                              extra_args=flag_values.predict_args)
  print(f"[profile] {shlex.join(command)}", flush=True)
  try:
    result = profile_command(command, flag_values.interval_s, flag_values.gpu)
  except ValueError as e:
    print(f"profile: error: {e}", file=sys.stderr)
    return 2
  table = summarize(result)
  record = report(result, table, flag_values.note)
  json_path, png_path = write_outputs(record, result, flag_values.output_dir, flag_values.name,
                                      flag_values.title)
  for line in format_table(table):
    print(f"[profile] {line}")
  print(f"[profile] exit code {result['returncode']}; wrote {json_path} and {png_path}")
  return result["returncode"]


if __name__ == "__main__":
  from aop_tf import cli  # pylint: disable=import-outside-toplevel
  _define_flags()
  cli.run(main, "profile")
