# make demo / make test: create or refresh .venv, install the pinned CPU torch when no torch
# is present (an unpinned torch would pull a multi-GB CUDA build), install omnifield, run.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
EXTRAS ?= all
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

$(VPY):
	$(PY) -m venv $(VENV)

venv: $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_PIN)
	$(VPY) -m pip install -q -e ".[$(EXTRAS)]"

demo: venv
	$(VENV)/bin/omnifield demo

test: venv
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: venv
	$(VPY) bench/cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
