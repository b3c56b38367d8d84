"""profile: sampling a command's CPU and memory, the Table 3 figures, the Figure 2 plot, the CLI."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from benchmarks import profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A parent and a child that touches ~200 MiB; each burns 0.3 s of CPU time, says "ready" and then
# blocks until its stdin closes, so the sampler reads a known state, however loaded the machine.
TREE = textwrap.dedent("""
    import subprocess, sys, time
    def burn(seconds):
      start = time.process_time()
      while time.process_time() - start < seconds:
        pass
    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
        "start = time.process_time()\\nwhile time.process_time() - start < 0.3: pass\\n"
        "print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    burn(0.3)
    print("ready", flush=True)
    sys.stdin.read()
    child.stdin.close()
    child.wait()
""")


def test_tree_sampler_counts_the_children():
  proc = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    used_s, rss, alive, peak = profile._TreeSampler(proc.pid).sample()  # pylint: disable=protected-access
  finally:
    proc.stdin.close()
    proc.wait(timeout=60)
  assert alive == 2
  assert rss >= 200 * profile.MIB and peak >= rss
  assert used_s >= 0.6  # both processes' CPU time, counted from their start


def test_profile_command_records_the_series():
  result = profile.profile_command(
      [sys.executable, "-c", "import time; print('finished'); time.sleep(0.3)"],
      interval_s=0.05, gpu="off", echo=False)
  assert result["returncode"] == 0
  assert result["output_tail"][-1] == "finished"
  series = result["series"]
  assert set(series) == set(profile.SERIES_KEYS)
  assert all(len(v) == len(series["t_s"]) for v in series.values())
  assert series["t_s"] == sorted(series["t_s"]) and series["t_s"][-1] == result["runtime_s"]
  assert result["runtime_s"] >= 0.3
  table = profile.summarize(result)
  assert 0 <= table["cpu_auc_percent_s"] <= 100 * os.cpu_count() * result["runtime_s"] * 1.1
  assert table["gpu_max_percent"] is None


def test_exit_code_and_output_are_kept():
  # The sleep keeps the command alive for a few samples even on a loaded machine (a process that
  # has already exited when it is first sampled has no memory to read).
  result = profile.profile_command(
      [sys.executable, "-c", "import time; print('oops', flush=True); time.sleep(0.5); "
       "raise SystemExit(3)"], interval_s=0.05, gpu="off", echo=False)
  assert result["returncode"] == 3
  assert result["output_tail"] == ["oops"]
  if sys.platform.startswith("linux"):
    assert result["ram_peak_hwm_mib"] > 1


def test_missing_command_is_a_clear_error():
  with pytest.raises(ValueError, match="no_such_program_xyz"):
    profile.profile_command(["no_such_program_xyz"], gpu="off", echo=False)


def test_summarize_hand_worked():
  result = {"runtime_s": 3.0, "ram_peak_hwm_mib": 150.0, "series": {
      "t_s": [0.0, 1.0, 2.0, 3.0], "cpu_percent": [0.0, 100.0, 200.0, 100.0],
      "rss_mib": [0.0, 100.0, 120.0, 0.0], "n_processes": [1, 1, 1, 0],
      "system_cpu_percent": [0.0, 50.0, 100.0, 60.0],
      "gpu_percent": [None] * 4, "gpu_mem_mib": [None] * 4}}
  table = profile.summarize(result)
  assert table["runtime_s"] == 3.0
  assert table["cpu_max_percent"] == 200.0
  assert table["cpu_auc_percent_s"] == pytest.approx(50 + 150 + 150)
  assert table["cpu_mean_percent"] == pytest.approx(350 / 3, abs=0.1)
  assert table["ram_max_sampled_mib"] == 120.0
  assert table["ram_max_mib"] == 150.0  # the kernel's peak, missed between samples
  assert table["ram_auc_mib_s"] == pytest.approx(50 + 110 + 60)
  assert table["system_cpu_mean_percent"] == pytest.approx(70.0)
  assert table["gpu_mem_max_mib"] is None


def _fake_nvidia_smi(folder):
  """An `nvidia-smi` that lists one GPU and streams two readings per tick like `-lms` does."""
  path = os.path.join(folder, "nvidia-smi")
  with open(path, "w") as f:
    f.write(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = "-L" ]; then echo "GPU 0: Fake GPU (UUID: GPU-0)"; exit 0; fi
        while true; do echo "0, 37, 1536"; echo "1, [N/A], 512"; sleep 0.02; done
        """))
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
  return path


def test_gpu_figures_from_nvidia_smi(tmp_path):
  sampler = profile.NvidiaSmiSampler(interval_ms=20, executable=_fake_nvidia_smi(str(tmp_path)))
  assert sampler.available()
  result = profile.profile_command([sys.executable, "-c", "import time; time.sleep(0.3)"],
                                   interval_s=0.05, gpu=sampler, echo=False)
  table = profile.summarize(result)
  assert result["gpu"]["gpu_mem_baseline_mib"] == 1536.0  # the "[N/A]" line is skipped
  assert table["gpu_max_percent"] == 37.0
  assert table["gpu_mem_max_mib"] == 1536.0
  t_s = result["series"]["t_s"]
  assert table["gpu_mem_auc_mib_s"] == pytest.approx(1536.0 * (t_s[-1] - t_s[0]), abs=0.1)
  png = str(tmp_path / "gpu.png")
  profile.plot(result, table, png)
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_gpu_when_nvidia_smi_is_absent(tmp_path):
  assert not profile.NvidiaSmiSampler(executable=str(tmp_path / "missing")).available()


def test_default_command_is_predict():
  argv = profile.default_command("saved_models/x", ["a/", "b.png"], "out/p.csv", python="py",
                                 extra_args=["--batch_size=4"])
  assert argv == ["py", "-m", "aop_tf.predict", "--model=saved_models/x", "--inputs=a/,b.png",
                  "--output=out/p.csv", "--batch_size=4"]
  assert profile.short_command(["/usr/bin/python3", "-m", "aop_tf.predict", "--x=" + "y" * 200],
                               width=40) == "python -m aop_tf.predict --x=yyyyyyyy..."


def _run_cli(args, cwd):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "benchmarks.profile", *args], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=120)


def test_cli_writes_json_and_png(tmp_path):
  out = tmp_path / "prof"
  proc = _run_cli([f"--output_dir={out}", "--name=tiny", "--interval_s=0.05", "--gpu=off",
                   "--note=test run", "--", sys.executable, "-c",
                   "import time; print('hello'); time.sleep(0.3)"], str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert "hello" in proc.stdout and "runtime" in proc.stdout
  record = json.loads((out / "tiny.json").read_text())
  assert record["returncode"] == 0 and record["note"] == "test run"
  assert record["output_tail"] == ["hello"]
  assert set(record["table3"]) >= {"runtime_s", "cpu_max_percent", "cpu_auc_percent_s",
                                   "ram_max_mib", "ram_auc_mib_s", "gpu_max_percent"}
  assert record["table3"]["runtime_s"] >= 0.3
  assert record["paper_table3"]["runtime_s"] == 17.66
  assert record["machine"]["cpu_count"] == os.cpu_count()
  assert len(record["series"]["t_s"]) == len(record["series"]["rss_mib"]) >= 3
  assert (out / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_passes_the_exit_code_and_needs_a_command(tmp_path):
  proc = _run_cli([f"--output_dir={tmp_path}", "--gpu=off", "--", sys.executable, "-c",
                   "raise SystemExit(5)"], str(tmp_path))
  assert proc.returncode == 5
  assert (tmp_path / "profile.json").exists()
  proc = _run_cli([f"--output_dir={tmp_path}"], str(tmp_path))
  assert proc.returncode == 2
  assert "--model and --inputs" in proc.stderr
