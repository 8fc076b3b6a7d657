# edgeagent: the two commands are `make run` (the main job on embedded defaults) and `make test`.
# Every target installs what it needs and is idempotent; slow set-up is cached per machine under $(CACHE).

SHELL := /bin/bash
PY_SYSTEM ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/edgeagent
export EDGEAGENT_CACHE := $(CACHE)

.PHONY: all setup system-deps venv guests kube keylime test test-unit lint run clean

all: setup

system-deps: .stamps/system-deps
.stamps/system-deps: scripts/install-system-deps.sh
	./scripts/install-system-deps.sh
	@mkdir -p .stamps && touch $@

# The venv sees Debian's site-packages: the umockdev GObject bindings (python3-gi) exist only there.
venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml .stamps/system-deps
	test -x $(PY) || $(PY_SYSTEM) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: venv guests

guests: .stamps/system-deps
	$(MAKE) -C drivers
	$(MAKE) -C controllers

kube: .stamps/system-deps
	./scripts/build-kubernetes.sh

keylime: .stamps/system-deps
	./scripts/install-keylime.sh

test: setup kube keylime
	$(VENV)/bin/ruff check edgeagent tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy edgeagent
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check edgeagent tests
	$(VENV)/bin/ruff format --check edgeagent tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy edgeagent

run: setup
	./scripts/run-embedded.sh

clean:
	$(MAKE) -C drivers clean
	$(MAKE) -C controllers clean
	rm -rf .stamps $(VENV) .pytest_cache
