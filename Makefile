# Entry points for a fresh machine: `make demo`, `make test` (quick: after every change) and
# `make test-all` (everything: what CI runs).
# Each creates the virtual environment .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all clean readme-pictures

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
	$(PY) Predict.py demo/run/best.pt demo/data/voc2012/val/images --limit 6 \
		--masks demo/data/voc2012/val/masks --out demo/predictions --no-progress
	$(PY) Evaluate.py demo/run/best.pt --no-progress
	$(PY) Report.py demo/run --out demo/report.html
	@echo "demo finished: checkpoints in demo/run"
	@echo "pictures: demo/run/curves.png, demo/run/samples/epoch_NNN.png (every epoch),"
	@echo "  demo/predictions/{masks,overlays,panels}/, demo/report.html"
	@echo "scores: demo/run/eval-best-val.md (and .json)"

# The README's pictures (docs/images/) from the demo run; runs the demo first when there is none.
readme-pictures: $(VENV)/.installed
	test -f demo/run/curves.png || $(MAKE) demo
	$(PY) docs/readme_pictures.py demo/run docs/images

PYTEST := $(PY) -m pytest -q --numprocesses=auto --maxprocesses=4 --dist worksteal

# The quick tier: every model built, run and trained at a tiny size, one ONNX export per model family,
# and every other behaviour but the tests marked slow (tests/conftest.py).
test: $(VENV)/.installed
	$(PYTEST) -m "not slow" tests

# Everything: every model exported and trained under half precision, the encoder x decoder matrix,
# the killed and signalled processes, torchrun.
test-all: $(VENV)/.installed
	$(PYTEST) tests

clean:
	rm -rf demo $(VENV)
