"""`python -m aop_tf.viewer`: serves the viewer on this machine and prints its address.

  python -m aop_tf.viewer [--model=psfhs] [--inputs=scans/,clip.mp4] [--labels=corrections.csv]
      [--port=0] [--open] [--host=127.0.0.1] [--max_upload_mb=512]

Open the printed address (it carries the session's token) in a browser on this machine; drop
images, DICOMs or clips on the page, correct the landmarks, accept them (a / Enter) and they are
saved to --labels. Read the saved work back as a dataset with
`python -m data_prep.build --source=csv --csv=train:<labels> --image_dir=<its folder>`.
"""

import sys
import webbrowser

from absl import app
from absl import flags

from aop_tf import cli
from aop_tf.viewer import server

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a program, so importing the module defines no global flags."""
  flags.DEFINE_string("model", "psfhs", "Shipped model name, training directory, SavedModel "
                      "folder or .tflite file.")
  flags.DEFINE_multi_string("inputs", [], "Images, DICOMs, clips or folders to open at start; "
                            "repeat the flag or separate by commas.")
  flags.DEFINE_boolean("clip_dirs", False, "A folder of --inputs whose files are all numbered "
                       "images (frame_0001.png, ...) is one clip, not separate images.")
  flags.DEFINE_string("labels", "corrections.csv", "The corrections CSV (IUGC format plus "
                      "source, frame, model_aop_deg, corrected); read back if it exists, so "
                      "work resumes; labelled frames are written as PNGs beside it.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on. Anything but 127.0.0.1 lets "
                      "other machines reach the viewer (the token still guards it).")
  flags.DEFINE_integer("port", 0, "Port; 0: a free one.")
  flags.DEFINE_boolean("open", False, "Open the page in the default browser.")
  flags.DEFINE_float("max_upload_mb", 512, "Larger uploads are refused (413).")
  flags.DEFINE_float("min_confidence", None, "Flag threshold on the lowest heatmap peak; "
                     "default the model card's (0.69 for psfhs), else 0.3.")
  flags.DEFINE_string("name", None, "The model's name under /v1/models/ (TF Serving's REST "
                      "API); default the shipped name or the folder's name.")
  flags.DEFINE_boolean("trust_model", False, "Run a SavedModel even if its graph holds ops no "
                       "aop_tf export holds.")


def _report_inputs(items, problems):
  print(f"[viewer] {len(items)} inputs opened", flush=True)
  for problem in problems:
    print(f"[viewer] warning: {problem}", file=sys.stderr, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.host not in server.LOOPBACK:
    print(f"[viewer] WARNING: --host={FLAGS.host} lets other machines reach this viewer and "
          "the images you open; only the token in the URL guards it. Use 127.0.0.1 unless you "
          "need this.", file=sys.stderr, flush=True)
  viewer = server.Viewer(FLAGS.model, FLAGS.inputs, FLAGS.labels, FLAGS.host, FLAGS.port,
                         FLAGS.max_upload_mb, FLAGS.min_confidence, FLAGS.name,
                         clip_dirs=FLAGS.clip_dirs, trust_model=FLAGS.trust_model)
  store = viewer.workspace.store
  print(f"[viewer] model {FLAGS.model}: loading in the background", flush=True)
  print(f"[viewer] corrections: {store.path} ({len(store)} saved rows read back)", flush=True)
  viewer.open_inputs(on_done=_report_inputs)
  print(f"[viewer] open {viewer.url}", flush=True)
  print("[viewer] Ctrl-C to stop", flush=True)
  if FLAGS.open:
    webbrowser.open(viewer.url)
  try:
    viewer.serve_forever()
  except KeyboardInterrupt:  # Ctrl-C is how a server stops
    pass
  print("[viewer] stopped", flush=True)
  return 0


if __name__ == "__main__":
  _define_flags()
  cli.run(main, "viewer")
