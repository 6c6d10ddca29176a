# `make install`: system packages and a .venv at the repository root; `make test`: lint and the test suite.
VENV := .venv
PIP := $(VENV)/bin/python -m pip
PYTHON ?= python3
# The CPU build of this torch version is what CPU-only machines here install locally; a newer or unpinned torch
# pulls a multi-GB CUDA build. On a GPU machine, install the CUDA torch you want first: `pip install -e .` keeps it.
TORCH ?= torch==2.13.0
MOSHI := moshi==0.2.13
# a test dependency, without its pins of soundfile and soxr (see pyproject.toml)
PIPECAT := pipecat-ai==1.14.0
# PortAudio for sounddevice; PulseAudio with a null sink and parec for the playback tests; curl for the server's;
# ffmpeg, a reader the tests open every written file with; a C++ compiler and Python's headers for torch.compile's
# code on the CPU (`--compile`).
APT_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins curl ffmpeg g++ python3-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# What the GPU machines' image lacks, as wheels for its Python 3.12, carried in .whl/ (ignored by git).
GPU_WHEELS := moshi==0.2.13 soundfile==0.14.0 soxr==1.1.0 sounddevice==0.5.6 cffi==2.1.1 pycparser==3.12
WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux1_x86_64,--platform $(p))

.PHONY: install system-packages test lint gpu-wheels gpu-check

install: system-packages $(VENV)/.installed

system-packages:
	@if command -v apt-get >/dev/null && ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	# moshi without its stale pins (see pyproject.toml); what its Mimi needs comes with this package
	$(PIP) install -q --no-deps "$(MOSHI)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps "$(PIPECAT)"
	touch $@

lint: install
	$(VENV)/bin/ruff check csm_cli tests scripts bench

# two workers: CI's two cores (the suite takes 9 minutes here instead of 15; each test's files, sound server and
# caches are its own or its worker's); the tests of one xdist_group run on one worker, in order
test: lint
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup

# Where pip has a network: download the wheels `gpu-check` installs on a GPU machine.
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(WHEEL_PLATFORMS) -d .whl $(GPU_WHEELS)

# The one command a session with a GPU runs first (carrying .whl): install what is missing, the gpu tests, the
# benches, a profile of one frame; one Markdown report, gpu-check.md, in $OUT or here.
gpu-check:
	python3 scripts/gpu_check.py --wheels .whl
