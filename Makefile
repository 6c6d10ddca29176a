# `make install`: system packages and a .venv at the repository root; `make test`: lint and the test suite.
VENV := .venv
PIP := $(VENV)/bin/python -m pip
PYTHON ?= python3
# The CPU build of this torch version is what CPU-only machines here install locally; a newer or unpinned torch
# pulls a multi-GB CUDA build. On a GPU machine, install the CUDA torch you want first: `pip install -e .` keeps it.
TORCH ?= torch==2.13.0
MOSHI := moshi==0.2.13
# PortAudio for sounddevice; PulseAudio with a null sink and parec for the playback tests; curl for the server's.
APT_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins curl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-packages test lint

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
	touch $@

lint: install
	$(VENV)/bin/ruff check csm_cli tests bench

test: lint
	$(VENV)/bin/python -m pytest
