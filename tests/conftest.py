"""Fixtures shared by several test files."""

import pytest

import helpers


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
  """A tiny phantom dataset (train 8, val 4, 64x64), built once per session; tests only read it."""
  from data_prep.build import build_dataset  # pylint: disable=import-outside-toplevel
  return build_dataset("phantom", out_dir=str(tmp_path_factory.mktemp("phantom")),
                       phantom_counts={"train": 8, "val": 4}, phantom_size=64, verbose=False)


@pytest.fixture(scope="session")
def entry_points():
  """`helpers.EntryPoints`: `python -m` entry points in forks of one preloaded process."""
  runner = helpers.EntryPoints()
  yield runner
  runner.close()
