"""Clip throughput end to end: `python -m aop_tf.predict` on a 60-s, 30-frames/s, 512x512 clip.

  python -m benchmarks.clips [--model=psfhs] [--seconds=60] [--fps=30] [--size=512] \
      [--out=benchmarks/results/clips.json]

The clip is written first (MJPG .avi, OpenCV quality 100): consecutive real PSFHS frames of one
40-file block, scaled to `--size`, cycled to fill the clip (the data holds no real clip). Then
`predict --frames=all` runs on it in a child process sampled by `benchmarks.profile` (wall time,
peak RSS of the process tree); frames/s = frames predicted / wall time of the whole command
(start-up, model load, decoding, the model, the CSV and the clip summary included). Goal: real time
(>= 25 frames/s) in <= 1 GB. The load average before and after is recorded: the CPU may be shared.
"""

import datetime
import json
import os
import platform
import sys
import tempfile

from absl import app
from absl import flags
import cv2
import numpy as np

from benchmarks import profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
GOALS = {"frames_per_s": 25.0, "ram_peak_mib": 1024.0}

flags.DEFINE_string("model", "psfhs", "predict's --model.")
flags.DEFINE_float("seconds", 60.0, "Clip length, seconds.")
flags.DEFINE_float("fps", 30.0, "Clip frame rate.")
flags.DEFINE_integer("size", 512, "Frame side, pixels.")
flags.DEFINE_string("psfhs_dir", os.environ.get("AOP_PSFHS_DIR", os.path.join(
    os.path.dirname(REPO), "shared", "data", "psfhs")), "PSFHS folder (frames of the clip).")
flags.DEFINE_list("predict_args", [], "Extra predict flags, e.g. --batch_size=16.")
flags.DEFINE_string("out", os.path.join(REPO, "benchmarks", "results", "clips.json"),
                    "JSON written here.")
FLAGS = flags.FLAGS


def write_clip(path, psfhs_dir, n_frames, fps, size):
  """Writes the benchmark clip; returns the frame count written."""
  import clip_files  # pylint: disable=import-outside-toplevel
  _, frames = clip_files.psfhs_block_frames(psfhs_dir)
  scaled = [cv2.resize(f.reshape(f.shape[:2]), (size, size), interpolation=cv2.INTER_CUBIC)
            for f in frames]
  return clip_files.write_video(path, (scaled[k % len(scaled)] for k in range(n_frames)), fps=fps)


def main(argv):
  del argv
  n_frames = int(round(FLAGS.seconds * FLAGS.fps))
  with tempfile.TemporaryDirectory(prefix="aop_clips_") as tmp:
    clip = os.path.join(tmp, "clip.avi")
    written = write_clip(clip, FLAGS.psfhs_dir, n_frames, FLAGS.fps, FLAGS.size)
    output = os.path.join(tmp, "pred.csv")
    argv = [sys.executable, "-m", "aop_tf.predict", f"--model={FLAGS.model}",
            f"--inputs={clip}", f"--output={output}", "--frames=all", *FLAGS.predict_args]
    run = profile.profile_command(argv, echo=False)
    with open(output) as f:
      predicted = sum(1 for _ in f) - 1
  wall = run["runtime_s"]
  result = {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(["python -m benchmarks.clips"] + sys.argv[1:]),
      "predict": " ".join(argv[1:]),
      "clip": {"frames": written, "fps": FLAGS.fps, "size_px": FLAGS.size, "codec": "MJPG .avi"},
      "frames_predicted": predicted, "wall_s": round(wall, 2),
      "frames_per_s": round(predicted / wall, 2),
      "real_time_factor": round(predicted / wall / FLAGS.fps, 3),
      "ram_peak_mib": run["ram_peak_hwm_mib"], "returncode": run["returncode"],
      "loadavg_before": run["loadavg_before"], "loadavg_after": run["loadavg_after"],
      "goals": GOALS, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
      "output_tail": run["output_tail"][-5:],
  }
  result["meets_goals"] = bool(result["frames_per_s"] >= GOALS["frames_per_s"] and
                               (result["ram_peak_mib"] or 0) <= GOALS["ram_peak_mib"])
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(json.dumps({k: result[k] for k in ("frames_predicted", "wall_s", "frames_per_s",
                                            "ram_peak_mib", "meets_goals")}))


if __name__ == "__main__":
  app.run(main)
