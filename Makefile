# charger-update-agent: everything a fresh Debian/Ubuntu machine needs, installed by the
# targets themselves (a venv for Python packages, apt for the real tools the tests talk to).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real tools the tests use for format interop and as live peers; installed when missing.
APT_TOOLS := fw_printenv:libubootenv-tool mkenvimage:u-boot-tools grub-editenv:grub-common \
             grub-emu:grub-emu mke2fs:e2fsprogs sfdisk:fdisk \
             mosquitto:mosquitto stm32flash:stm32flash

.PHONY: all venv sysdeps qemu-deps test demo demo-fleet bench bench-delta soak fuzz lint clean
# MicroPython 1.27 (WebAssembly port, run by Node.js) for the agent/core scenario tests.
MICROPYTHON := .cache/micropython/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs

all: test

# The system packages come first: on a fresh Debian the venv itself needs python3-venv.
$(STAMP): pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint,hil,fleet]'
	touch $@

venv: $(STAMP)

# Installs only what is missing; needs root (or sudo) the first time.
sysdeps:
	@missing=""; for pair in $(APT_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Real U-Boot in QEMU (hil/qemu.py): Debian 12's QEMU 7.2 cannot saveenv to pflash, so on
# bookworm take qemu-system-arm (>= 8) from bookworm-backports; u-boot-qemu gives u-boot.bin.
QEMU_BACKPORTS := /etc/apt/sources.list.d/backports.sources
# The machine's own Debian mirror (deb822 .sources or a one-line sources.list entry), so a
# local mirror is used and no host is written here.
APT_MIRROR := { awk '/^URIs:/ {u = $$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($$i == "bookworm") {print u; exit}}' \
	/etc/apt/sources.list.d/*.sources 2>/dev/null; \
	awk '$$1 == "deb" {for (i = 2; i <= NF; i++) if ($$i ~ /^[a-z]+:/ && $$(i + 1) == "bookworm") {print $$i; exit}}' \
	/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; } | head -n 1
qemu-deps:
	@v=$$(qemu-system-aarch64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p'); \
	if [ -z "$$v" ] || [ "$$v" -lt 8 ] || [ ! -f /usr/lib/u-boot/qemu_arm64/u-boot.bin ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); T=""; \
	  if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then \
	    T="-t bookworm-backports"; \
	    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d; then \
	      mirror=$$($(APT_MIRROR)); \
	      [ -n "$$mirror" ] || { echo "no Debian mirror for bookworm in /etc/apt/sources*" >&2; exit 1; }; \
	      printf '%s\n' 'Types: deb' "URIs: $$mirror" 'Suites: bookworm-backports' \
	        'Components: main' | $$SUDO tee $(QEMU_BACKPORTS) >/dev/null; \
	    fi; \
	  fi; \
	  echo "installing qemu-system-arm ($$T) and u-boot-qemu"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$T qemu-system-arm && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq u-boot-qemu; \
	fi

$(MICROPYTHON):
	@command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq nodejs npm; }
	npm install --no-save --prefix .cache/micropython @micropython/micropython-webassembly-pyscript@1.27.0

# umqtt for agent/mpy: its pinned PyPI source archive, read with tarfile (hil/mpyboard/deps.py).
UMQTT := .cache/micropython-lib/umqtt/simple2.py
$(UMQTT): | venv
	$(BIN)/python -m hil.mpyboard.deps

# Workers for make test (pytest-xdist): the tests mostly wait, so two keep a 2-core machine
# busy; TEST_WORKERS=0 runs them one after the other in this process.
TEST_WORKERS ?= 2
test: venv sysdeps qemu-deps $(MICROPYTHON) $(UMQTT)
	$(BIN)/pytest -n $(TEST_WORKERS)

# The long power-cut soaks (issue 18); make test runs short ones. Seeded: the same SOAK_SEED
# replays the same plan.
SOAK_SEED ?= 18
SOAK_JOURNEYS ?= 100
SOAK_QEMU_JOURNEYS ?= 20
soak: venv sysdeps qemu-deps
	$(BIN)/python -m hil.soak --journeys $(SOAK_JOURNEYS) --seed $(SOAK_SEED)
	$(BIN)/python -m hil.soak_qemu --journeys $(SOAK_QEMU_JOURNEYS) --seed $(SOAK_SEED)

bench: venv sysdeps $(UMQTT)
	$(BIN)/python -m tests.bench
	$(BIN)/python -m tests.bench_mcu
	$(BIN)/python -m tests.bench_mpy

# Every parser fuzzed for FUZZ_SECONDS in all (make test runs a short bounded pass); inputs
# that break one are saved under tests/fuzz/corpus/<target>/ (docs/security.md, Fuzzing).
FUZZ_SECONDS ?= 600
fuzz: venv sysdeps
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# Delta downloads against xdelta3, zchunk and casync on ext4 images built from debootstrap
# trees (cached under .cache/bench-delta; the mirror is the machine's own apt source).
DELTA_TOOLS := xdelta3:xdelta3 zck:zchunk casync:casync debootstrap:debootstrap
bench-delta: venv sysdeps
	@missing=""; for pair in $(DELTA_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	$(BIN)/python -m tests.bench_delta

demo: venv sysdeps
	$(BIN)/python -m hil.demo

# The fleet: 3 virtual boards + 500 simulated chargers, a bad and a good rollout (docs/fleet.md).
demo-fleet: venv sysdeps
	$(BIN)/python -m hil.fleet_demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
