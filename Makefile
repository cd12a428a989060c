# Two commands for a fresh machine: `make demo` (set up + deploy a bundled example) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system demo test lint peers-deps clean

setup: $(VENV)/.installed

# lava-nc / lava-dl declare Python < 3.11 and pin old torch: install our (and their) run-time
# needs normally, then the two archived packages without dependency resolution.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,onnx]'
	$(BIN)/pip install -q --no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0
	touch $@

# Debian packages: the Fashion-MNIST data, and Chromium, in which the report test renders the
# HTML report headless
SYSTEM := $(FMNIST)/t10k-images-idx3-ubyte.gz /usr/bin/chromium

system: $(SYSTEM)

$(SYSTEM) &:
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist chromium

# One torch thread: on the shared 2-core machine two threads slowed the engine tenfold (README)
demo: setup system
	OMP_NUM_THREADS=1 $(BIN)/lavaconv deploy examples/resnet_fmnist.pt2 --data fashion-mnist \
		--timesteps 64 --samples 1000 --lava-samples 4 --out out/demo

test: setup system
	$(BIN)/python -m pytest -q

# bench/peers.py: spikingjelly declares torchvision, torchaudio, tensorboard and SciencePlots,
# which its ann2snn does not import (and torchvision would replace our torch): --no-deps
peers-deps: setup
	$(BIN)/pip install -q --no-deps spikingjelly==2.0.0
	$(BIN)/pip install -q 'loguru>=0.7,<1' 'requests>=2'

lint: setup
	$(BIN)/ruff check lavaconv tests examples bench

clean:
	rm -rf $(VENV) out
