# charger-update-agent: everything a fresh Debian/Ubuntu machine needs, installed by the
# targets themselves (a venv for Python packages, apt for the real tools the tests talk to).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real tools the tests use for format interop and as live peers; installed when missing.
APT_TOOLS := fw_printenv:libubootenv-tool mkenvimage:u-boot-tools grub-editenv:grub-common \
             grub-emu:grub-emu mke2fs:e2fsprogs \
             mosquitto:mosquitto

.PHONY: all venv sysdeps test demo bench lint clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@

venv: $(STAMP)

# Installs only what is missing; needs root (or sudo) the first time.
sysdeps:
	@missing=""; for pair in $(APT_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: venv sysdeps
	$(BIN)/pytest

bench: venv sysdeps
	$(BIN)/python -m tests.bench

demo: venv sysdeps
	$(BIN)/python -m hil.demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
