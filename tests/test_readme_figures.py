"""README.md's figures read from their JSON (benchmarks/figures.py); run_training.sh's from the
shipped model's card."""

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import figures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_figures_match_their_json():
  stale, broken = figures.run(["README.md"], REPO)
  assert not stale + broken, ("README.md figures differ from their JSON (`python -m "
                              "benchmarks.figures --write` refills them):\n"
                              + "\n".join(stale + broken))
  with open(os.path.join(REPO, "README.md")) as f:
    assert len(figures.MARK.findall(f.read())) >= 20  # the marks were not lost in an edit


@pytest.fixture
def root(tmp_path):
  """A repository with one result and one card."""
  (tmp_path / "benchmarks" / "results").mkdir(parents=True)
  (tmp_path / "aop_tf" / "models" / "m").mkdir(parents=True)
  (tmp_path / "benchmarks" / "results" / "r.json").write_text(json.dumps(
      {"rows": [{"sdr_512": {"2": 0.0483}}, {"train_seconds": 2477.5}], "pair": {"change": -7.15}}))
  (tmp_path / "aop_tf" / "models" / "m" / "model_card.json").write_text(json.dumps(
      {"val": {"mre_512": {"mean": 13.7755}}}))
  return tmp_path


TEXT = """# Numbers
MRE <!--fig card:m val.mre_512.mean .2f-->13.2<!--/fig--> in 512 space, SDR
<!--fig r.json rows.0.sdr_512.2 *100 .1f-->4.8<!--/fig--> % within 2 px (a dotted key, whole).
Trained <!--fig benchmarks/results/r.json rows.1.train_seconds /60 .1f-->41.3<!--/fig--> min,
labels <!--fig r.json pair.change *-1 .0f-->7<!--/fig--> deg apart.
"""


def test_a_wrong_figure_is_reported_with_its_line_and_write_fixes_it(root):
  new, stale, broken = figures.refill(TEXT, figures.Sources(str(root)), "R.md")
  assert len(stale) == 1 and stale[0].startswith("R.md:2: <!--fig card:m val.mre_512.mean")
  assert "'13.2'" in stale[0] and "'13.78'" in stale[0]
  # A line that starts with a mark becomes raw HTML on GitHub: reported, like an unclosed mark.
  assert [b.split(": ", 1)[0] for b in broken] == ["R.md:3"]
  assert "MRE <!--fig card:m val.mre_512.mean .2f-->13.78<!--/fig--> in 512" in new
  assert new.replace("13.78", "13.2") == TEXT  # nothing else moved
  (root / "R.md").write_text(new.replace("\n<!--fig r.json rows.0", " <!--fig r.json rows.0"))
  assert figures.run(["R.md"], str(root)) == ([], [])


def test_lookup_and_render():
  data = {"a": [{"b.c": {"2": 5}}, 7], "a.x": 1}
  assert figures.lookup(data, "a.0.b.c.2") == 5
  assert figures.lookup(data, "a.x") == 1  # the longest key that matches wins
  assert figures.render(2477.5, ".1f", "/60") == "41.3"
  assert figures.render(0.345, ".1f", "*100") == "34.5"
  assert figures.render(200, "d") == "200"
  for key, says in (("a.2", "no item '2' in a list of 2 at 'a'"), ("b", "no key 'b' at 'the top'"),
                    ("a.1.z", "'a.1' holds 7, not")):
    with pytest.raises(KeyError, match=re.escape(says)):
      figures.lookup(data, key)


def test_broken_marks_are_reported_and_kept(root):
  text = ("a <!--fig r.json rows.9 .1f-->1<!--/fig--> b <!--fig nope.json x .1f-->2<!--/fig-->\n"
          "c <!--fig r.json rows .1f-->3<!--/fig--> d <!--fig r.json-->4<!--/fig-->"
          " e <!--fig r.json x\n")
  new, stale, broken = figures.refill(text, figures.Sources(str(root)), "R.md")
  assert new == text and not stale
  assert len(broken) == 5, broken
  assert "no item '9'" in broken[0] and "benchmarks/results/nope.json not found" in broken[1]
  assert "unsupported format" in broken[2] and "FILE KEY [*N|/N] FORMAT" in broken[3]
  assert broken[4].startswith("R.md:2: a '<!--fig' mark without")


def test_command_line_check_and_write(root):
  (root / "R.md").write_text("MRE <!--fig card:m val.mre_512.mean .2f-->13.2<!--/fig-->\n")
  command = [sys.executable, "-m", "benchmarks.figures", f"--root={root}", "--files=R.md"]
  run = lambda flag: subprocess.run(command + [flag], cwd=REPO, capture_output=True, text=True)
  check = run("--check")
  assert check.returncode == 1 and "R.md:1:" in check.stdout and "1 stale" in check.stdout
  assert run("--write").returncode == 0
  assert "-->13.78<!--/fig-->" in (root / "R.md").read_text()
  assert run("--check").returncode == 0


def test_run_training_quotes_the_shipped_card():
  """The closing summary's accuracy of the shipped model is read from its card at run time."""
  with open(os.path.join(REPO, "run_training.sh")) as f:
    script = f.read()
  block = re.search(r"# The shipped model's accuracy as its card states it\.\n"
                    r".*?<<'EOF'\n(.*?)\nEOF\n", script, re.S)
  assert block, "run_training.sh: the inline Python block that reads the card was not found"
  out = subprocess.run([sys.executable, "-c", block[1]], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
  with open(os.path.join(REPO, "aop_tf", "models", "psfhs", "model_card.json")) as f:
    val = json.load(f)["val"]
  assert (f"the shipped model: {val['mre_512']['mean']:.1f} px in 512 space, "
          f"{val['aop_error_deg']['mean']:.1f} deg on PSFHS val") in out
