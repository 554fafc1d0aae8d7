# portside: `make run` shows this machine's ports; `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Debian packages the tests drive for real (installed by `make test` when run as root).
APT_PACKAGES := iproute2 openssh-server openssh-client lsof nftables iptables openssl \
	redis-server postgresql util-linux qemu-system-x86 chromium busybox-static \
	docker.io podman runc netavark libnss3-tools prometheus ufw zsh
# Public tools the benchmarks compare against (`make bench`).
BENCH_APT_PACKAGES := hyperfine nmap nginx wrk socat iperf3

.PHONY: run test lint typecheck compile bench system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# Python 3.11's venv brings setuptools, which nothing here uses (hatchling builds the
	# package, in isolation); its distutils-precedence.pth costs every start 0.5-1 ms.
	$(BIN)/python -m pip uninstall -q -y setuptools
	touch $(STAMP)

# Byte-compile the package: start-up time is a feature, and PYTHONDONTWRITEBYTECODE
# (set in some environments) would otherwise recompile every module on every run.
compile: $(STAMP)
	$(BIN)/python -m compileall -q src >/dev/null

run: compile
	$(BIN)/portside

system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; \
		for p in $(APT_PACKAGES) $(EXTRA_APT); do \
			dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
		done; \
		if [ -n "$$missing" ]; then \
			echo "installing:$$missing"; \
			[ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; }; \
			DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
		fi; \
	else \
		echo "not root (or no apt-get): system packages not installed; tests that need them are skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: system-packages compile lint typecheck
	$(BIN)/pytest -q

# Every benchmark, each side by side with its peer tool; bench/README.md says how to read them.
BENCHES ?= inspect doctor scan serve proxy https forward ports audit
bench: compile
	$(MAKE) system-packages EXTRA_APT="$(BENCH_APT_PACKAGES)"
	@for b in $(BENCHES); do echo "== bench/bench_$$b.py"; $(BIN)/python bench/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
