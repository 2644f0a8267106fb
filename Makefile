# Two entry points for a fresh machine: `make demo` and `make test` (both set up first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
COMFY := .comfyui
SETUP_STAMP := $(VENV)/.setup-complete

.PHONY: setup demo test test-fast lint bench bench-world world-model clean

setup: $(SETUP_STAMP) $(COMFY)/comfyui_version.py

$(COMFY)/comfyui_version.py:
	scripts/install_comfyui.sh $(COMFY)

# ComfyUI's own requirements minus what this pack never uses (audio, upscalers) and minus
# torch itself, which comes from the dev/CI pins in .ci/constraints.txt.
$(SETUP_STAMP): $(COMFY)/comfyui_version.py requirements.txt requirements-dev.txt .ci/constraints.txt \
		scripts/install_browser.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c .ci/constraints.txt torch torchvision
	grep -vE '^\s*(torch|torchvision|torchaudio|spandrel)\b' $(COMFY)/requirements.txt > $(VENV)/comfyui-requirements.txt
	$(PY) -m pip install -q -c .ci/constraints.txt -r $(VENV)/comfyui-requirements.txt -r requirements-dev.txt
	scripts/install_browser.sh
	touch $@

demo: setup
	$(PY) scripts/demo.py --out out/demo

test: setup
	scripts/run_tests.sh

test-fast: setup
	$(PY) -m pytest tests/unit -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/run_all.py

# The paper in miniature on the shapes world (none / soft / hard / masked loss, two concepts, 3 seeds;
# about 32 min on 2 cores).
bench-world: setup
	$(PY) bench/shapes_world.py

# Rebuild the committed world-model weights (about an hour on 2 cores; see shapes_world/README.md).
world-model: setup
	$(PY) -m shapes_world.pretrain --minutes 50
	$(PY) -m shapes_world.decoder --minutes 10

clean:
	rm -rf out .pytest_cache
