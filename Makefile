# edgeagent: the two commands are `make run` (the main job on embedded defaults) and `make test`.
# Every target installs what it needs and is idempotent; slow set-up is cached per machine under $(CACHE).

SHELL := /bin/bash
PY_SYSTEM ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/edgeagent
export EDGEAGENT_CACHE := $(CACHE)

.PHONY: all setup system-deps venv guests kube kube-current keylime images helm deploy test test-unit lint run clean \
	install install-files install-python wasm

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
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

setup: venv guests

# The component drivers install their toolchain first (wasm-tools, wit-bindgen, Rust's wasm32-wasip2; cached
# under $(CACHE)/wasm-component-tools by scripts/install-wasm-component-tools.sh, which fails loudly).
guests: .stamps/system-deps
	$(MAKE) -C drivers
	$(MAKE) -C drivers/components
	$(MAKE) -C controllers

kube: .stamps/system-deps
	./scripts/build-kubernetes.sh

# Current Kubernetes (1.36) + etcd 3.6 from the Go module proxy (Go 1.26: the machine's, or fetched through the
# module proxy); the testbed's default release. 1.20 (`kube`) is kept for the cluster tests' second job.
kube-current:
	./scripts/build-kubernetes-current.sh

keylime: .stamps/system-deps
	./scripts/install-keylime.sh

# The cluster side's OCI images (attestation controller, Keylime) from pinned Debian packages and PyPI wheels
# (deploy/images/*.toml and *.lock), cached per machine; as root.
images: venv .stamps/system-deps
	$(PY) scripts/build-images.py

# helm v4 from the Go module proxy, cached per machine (~4 min the first time).
helm:
	./scripts/build-helm.sh

# deploy/*.yaml rendered from the chart (never edited by hand; a test checks they are current).
deploy: helm venv
	$(PY) scripts/render-deploy.py

# The tests that start a Kubernetes control plane, run a second time on 1.20 (the oldest release supported).
CLUSTER_TESTS := tests/integration/test_kube_cluster.py tests/integration/cloud tests/integration/test_controllers.py \
	tests/integration/test_attest_enroll.py

test: setup kube kube-current keylime images helm
	$(VENV)/bin/ruff check edgeagent tests scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy edgeagent
	$(PY) -m pytest -q
	EDGEAGENT_KUBE=1.20 $(PY) -m pytest -q $(CLUSTER_TESTS)

test-unit: setup
	$(PY) -m pytest -q tests/unit

# The same checks as `make test` (the code is formatted by hand to 110 columns, not by `ruff format`).
lint: venv
	$(VENV)/bin/ruff check edgeagent tests scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy edgeagent

run: setup kube-current keylime
	./scripts/run-embedded.sh

# ---------------------------------------------------------------- install
# `make install` (as root; DESTDIR for staging, PREFIX=/usr by default) puts the agent where its units and its
# default config expect it:
#   $(PREFIX)/lib/edgeagent/venv        the package and its PyPI deps, in a venv of the system Python 3.11:
#                                       Debian 12's Python is externally managed (PEP 668), and apt's python3-*
#                                       versions do not match ours (wasmtime 50, kubernetes>=29), so a private
#                                       venv rather than `pip install --prefix` into the system site.
#   $(PREFIX)/bin/edgeagent             a wrapper running `python -m edgeagent.cli.entry` in that venv (the venv
#                                       is built under DESTDIR and moved: only its console scripts would carry
#                                       the staging path, and the wrapper does not use them)
#   $(PREFIX)/lib/edgeagent/drivers     drivers/build/*.wasm        (config drivers.modules_dir), and
#                                       drivers/build/components/*.wasm in components/ when built
#   $(PREFIX)/lib/edgeagent/controllers controllers/build/*.wasm + manifests, module = "<name>.wasm"
#   $(UNITDIR)                          systemd/*.service, *.path; kubelet.service.d/edgeagent.conf
#   $(PREFIX)/lib/{sysusers,tmpfiles}.d edgeagent.conf
#   /etc/edgeagent/agent.toml           etc/agent.toml, only if absent (never overwrites a site config)
#   /etc/edgeagent/policies             policies/, file by file, only those absent (site edits survive)
# `install-files` is everything but the venv (fast, offline: what the tests run); `install-python` the venv
# (needs PyPI). Afterwards: systemd-sysusers; systemd-tmpfiles --create; systemctl daemon-reload.
PREFIX ?= /usr
DESTDIR ?=
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/edgeagent
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
PIP_INSTALL_FLAGS ?= --no-cache-dir --quiet
CONFIG_SRC ?= etc/agent.toml
CONFDIR := $(SYSCONFDIR)/edgeagent
UNITS := $(wildcard systemd/*.service systemd/*.path)
COMPONENT_DRIVERS = $(filter-out %.core.wasm,$(wildcard drivers/build/components/*.wasm))
CONTROLLER_MANIFESTS := $(filter-out controllers/testing/%,$(wildcard controllers/*/*.toml))

install: install-files install-python

wasm:
	$(MAKE) -C drivers
	$(MAKE) -C controllers

install-files: wasm
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/drivers $(DESTDIR)$(LIBDIR)/controllers \
		$(DESTDIR)$(UNITDIR)/kubelet.service.d $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/policies
	printf '#!/bin/sh\n# edgeagent, installed by make install: the package lives in its own venv.\nexec %s -m edgeagent.cli.entry "$$@"\n' \
		'$(LIBDIR)/venv/bin/python' > $(DESTDIR)$(BINDIR)/edgeagent
	chmod 0755 $(DESTDIR)$(BINDIR)/edgeagent
	install -m 0644 drivers/build/*.wasm $(DESTDIR)$(LIBDIR)/drivers/
	# The component drivers, when built (make guests / make -C drivers/components): modules_dir/components/.
	$(if $(COMPONENT_DRIVERS),install -d -m 0755 $(DESTDIR)$(LIBDIR)/drivers/components && \
		install -m 0644 $(COMPONENT_DRIVERS) $(DESTDIR)$(LIBDIR)/drivers/components/)
	install -m 0644 $(filter-out controllers/build/testing%,$(wildcard controllers/build/*.wasm)) \
		$(DESTDIR)$(LIBDIR)/controllers/
	for m in $(CONTROLLER_MANIFESTS); do \
		sed -E 's|^module = "([^"]*/)?([^"/]+)"|module = "\2"|' $$m > $(DESTDIR)$(LIBDIR)/controllers/$$(basename $$m) && \
		chmod 0644 $(DESTDIR)$(LIBDIR)/controllers/$$(basename $$m) || exit 1; \
	done
	for u in $(UNITS); do \
		sed 's|/usr/bin/edgeagent|$(BINDIR)/edgeagent|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u) && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u) || exit 1; \
	done
	install -m 0644 systemd/edgeagent-kubelet.conf $(DESTDIR)$(UNITDIR)/kubelet.service.d/edgeagent.conf
	install -m 0644 systemd/edgeagent.sysusers $(DESTDIR)$(SYSUSERSDIR)/edgeagent.conf
	install -m 0644 systemd/edgeagent.tmpfiles $(DESTDIR)$(TMPFILESDIR)/edgeagent.conf
	if [ -f $(CONFIG_SRC) ] && [ ! -e $(DESTDIR)$(CONFDIR)/agent.toml ]; then \
		install -m 0644 $(CONFIG_SRC) $(DESTDIR)$(CONFDIR)/agent.toml; fi
	if [ ! -e $(DESTDIR)$(CONFDIR)/kubelet-config.yaml ]; then \
		install -m 0644 etc/kubelet-config.yaml $(DESTDIR)$(CONFDIR)/kubelet-config.yaml; fi
	cd policies && find . -type d -exec install -d -m 0755 $(DESTDIR)$(CONFDIR)/policies/{} \; && \
		find . -type f -exec sh -c '[ -e "$$1/$$2" ] || install -m 0644 "$$2" "$$1/$$2"' _ $(DESTDIR)$(CONFDIR)/policies {} \;

install-python:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)
	$(PY_SYSTEM) -m venv --clear $(DESTDIR)$(LIBDIR)/venv
	$(DESTDIR)$(LIBDIR)/venv/bin/python -m pip install $(PIP_INSTALL_FLAGS) .

clean:
	$(MAKE) -C drivers clean
	$(MAKE) -C controllers clean
	rm -rf .stamps $(VENV) .pytest_cache
