#!/usr/bin/env bash
# Chromium and Playwright for Python, for the browser tests (tests/e2e/test_browser.py).
# Idempotent: installs only what is missing. Chromium comes from the system's package manager
# (Debian/Ubuntu: the chromium package), never from a downloaded browser build, so
# `playwright install` is not used. Where Chromium cannot be installed, the browser tests are
# skipped with a message saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! "$PY" -c "import playwright" 2>/dev/null; then
  "$PY" -m pip install -q "playwright>=1.45" || echo "warning: could not install playwright; browser tests will be skipped" >&2
fi

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no chromium and no apt-get here; install Chromium yourself (or set TL_CHROMIUM) to run the browser tests" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "note: chromium is missing; run 'sudo apt-get install chromium' to enable the browser tests" >&2
  exit 0
fi
echo "installing chromium (apt-get) for the browser tests"
$SUDO apt-get update -q >/dev/null \
  && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null \
  || echo "warning: apt-get could not install chromium; browser tests will be skipped" >&2
exit 0
