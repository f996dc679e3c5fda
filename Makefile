# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@

# The real pipeline, script by script, on a synthetic VOC 2012 archive, in demo/.
demo: $(VENV)/.installed
	rm -rf demo
	$(PY) DataExtract.py --synthetic --downloads demo/downloads --data-dir demo/data
	$(PY) DataSeparate.py --data-dir demo/data
	$(PY) TrainSegmentNet.py --config configs/demo.json
	@echo "demo finished: checkpoints in demo/run"

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf demo $(VENV)
