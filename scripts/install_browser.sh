#!/usr/bin/env bash
# Chromium and Playwright for Python, for the browser tests (tests/e2e/test_browser.py), and the
# newest ComfyUI frontend build they also run against (besides the one ComfyUI pins).
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

# The newest comfyui-frontend-package (keep in step with NEWEST_FRONTEND in tests/e2e/test_browser.py),
# unpacked into .cache/frontends/<version>/ and served with `--front-end-root`. A failed download
# leaves setup working; the browser tests of that frontend then fail saying how to fetch it.
NEWEST_FRONTEND=1.58.1
FRONTENDS="${TL_CACHE_DIR:-.cache}/frontends"
if [ ! -f "$FRONTENDS/$NEWEST_FRONTEND/comfyui_frontend_package/static/index.html" ]; then
  wheels=$(mktemp -d)
  if "$PY" -m pip download -q --no-deps "comfyui-frontend-package==$NEWEST_FRONTEND" -d "$wheels" \
    && rm -rf "$FRONTENDS/$NEWEST_FRONTEND.partial" \
    && "$PY" -m zipfile -e "$wheels"/comfyui_frontend_package-*.whl "$FRONTENDS/$NEWEST_FRONTEND.partial" \
    && rm -rf "$FRONTENDS/$NEWEST_FRONTEND" \
    && mv "$FRONTENDS/$NEWEST_FRONTEND.partial" "$FRONTENDS/$NEWEST_FRONTEND"; then
    echo "unpacked comfyui-frontend-package $NEWEST_FRONTEND into $FRONTENDS/$NEWEST_FRONTEND"
  else
    echo "warning: could not fetch comfyui-frontend-package $NEWEST_FRONTEND; its browser tests will fail until it is there" >&2
  fi
  rm -rf "$wheels"
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
