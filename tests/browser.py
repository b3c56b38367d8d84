"""Headless Chromium for the browser tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download is not used (it needs the network at test time); the tests
launch the system's `chromium` through `executable_path`. When it is missing, the set-up installs
the Debian package (`apt-get install chromium`, as root or through `sudo -n`); when no browser can
be had the tests FAIL, they do not skip: a viewer nobody checked in a browser is not tested.

  from browser import browser  # the fixture: a launched playwright Browser (module scope)
"""

import os
import shutil
import subprocess

import pytest

# Headless, no sandbox (containers), and nothing that phones home.
ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
        "--disable-component-update", "--no-first-run"]
NAMES = ("chromium", "chromium-browser")


def find_chromium():
  """The path of a system Chromium, or None."""
  return next((shutil.which(n) for n in NAMES if shutil.which(n)), None)


def _apt(*args):
  command = ["apt-get", *args]
  if os.geteuid() != 0:
    command = ["sudo", "-n", *command]
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  try:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
  except (OSError, subprocess.TimeoutExpired) as e:
    return subprocess.CompletedProcess(command, 1, "", str(e))


def ensure_chromium():
  """The path of Chromium, installed with apt-get if missing; fails the test if impossible."""
  path = find_chromium()
  if path:
    return path
  result = _apt("install", "-y", "--no-install-recommends", "chromium")
  if result.returncode != 0:  # stale package lists: update, then try once more
    _apt("update")
    result = _apt("install", "-y", "--no-install-recommends", "chromium")
  path = find_chromium()
  if not path:
    pytest.fail("the browser tests need Chromium and it could not be installed "
                f"(`{' '.join(result.args)}` exited {result.returncode}: "
                f"{(result.stderr or result.stdout)[-500:]}); install the Debian package "
                "`chromium` (apt-get install chromium)", pytrace=False)
  return path


@pytest.fixture(scope="module")
def browser():
  """A headless Chromium (playwright `Browser`), closed after the module."""
  path = ensure_chromium()
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  with sync_playwright() as playwright:
    launched = playwright.chromium.launch(executable_path=path, args=ARGS)
    yield launched
    launched.close()
