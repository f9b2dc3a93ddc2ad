# Slipway's commands. Run as root from the repository root.
#   make sandbox   set up the controller, bring up local VMs and converge site.yml on them
#   make test      lint + unit tests + app tests + sandbox tests + every Molecule scenario
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
PYTHON ?= python3
SANDBOX := $(PYTHON) -m tools.sandbox
PEBBLE := $(PYTHON) tools/pebble.py
SCENARIO ?= default
# Parallel pytest workers: Molecule scenarios, app tests and unit tests run side by side.
TEST_WORKERS ?= 4
PYTEST_ARGS ?=

.PHONY: help venv host promtool sandbox sandbox-down lint unit molecule test bench clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# uv is the one tool installed outside .venv, with pip; Debian's own python3 comes without
# pip (python3-pip, no recommends: a few MB) and refuses pip installs unless told (PEP 668).
# --compile-bytecode writes every module's .pyc now (~7 s), not at its first import, which
# never happens where PYTHONDONTWRITEBYTECODE is set (CI and container images often set it):
# there every Ansible command compiled Ansible from source at start (README, "Converge speed").
$(VENV)/.synced: pyproject.toml uv.lock app/pyproject.toml Makefile
	@command -v uv >/dev/null || { $(PYTHON) -m pip --version >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip; }; \
	  PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install --quiet 'uv>=0.5'; }
	uv sync --frozen --quiet --compile-bytecode
	@touch $@

venv: $(VENV)/.synced ## Create or update the controller virtualenv (uv, from uv.lock)

host: ## Install the host packages the sandbox and Pebble need (up does it too)
	$(SANDBOX) host

# promtool (Prometheus' config and rule checker) from Debian's prometheus package, unpacked
# into .cache/bin: the tests check the monitoring config with it, and no Prometheus service
# is installed on this machine.
PROMTOOL := .cache/bin/promtool
$(PROMTOOL):
	@mkdir -p .cache/debs .cache/bin
	cd .cache/debs && { apt-get download -qq prometheus 2>/dev/null \
	  || { apt-get update -qq && apt-get download -qq prometheus; }; }
	dpkg-deb --fsys-tarfile "$$(ls -t .cache/debs/prometheus_*.deb | head -1)" \
	  | tar -xO ./usr/bin/promtool > $@.tmp
	chmod 0755 $@.tmp && mv $@.tmp $@

promtool: $(PROMTOOL) ## Unpack promtool from Debian's prometheus package into .cache/bin

sandbox: venv ## Bring up the sandbox VMs and converge site.yml on them
	$(SANDBOX) up
	$(PEBBLE) start --from-inventory inventories/sandbox
	ansible-playbook site.yml -i inventories/sandbox
	@$(PYTHON) tools/sandbox_summary.py

sandbox-down: ## Stop and remove the sandbox VMs and Pebble
	-$(PEBBLE) stop
	$(SANDBOX) down

lint: venv ## ansible-lint (production profile), yamllint, ruff, mypy
	ansible-lint --nocolor -q
	yamllint --strict .
	ruff check .
	ruff format --check .
	mypy tools plugins app/src roles/postgresql_backup/files/slipway_backup

unit: venv $(PROMTOOL) ## Unit and app tests only (no VMs)
	pytest -m "not vm" -n $(TEST_WORKERS) $(PYTEST_ARGS)

molecule: venv ## One Molecule scenario: make molecule SCENARIO=allinone
	molecule test -s $(SCENARIO)

# `host` first: the VM tests and Molecule need the host packages, installed the way `up` does.
test: venv lint host $(PROMTOOL) ## Everything: lint, unit, app, sandbox and all Molecule scenarios
	pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

BENCH ?= sandbox,app,converge,deploy,backup,monitoring
bench: venv ## Measure and print figures into bench/results/latest.json (BENCH=deploy: one, others kept)
	$(PYTHON) bench/run.py --out bench/results/latest.json --only $(BENCH)

clean: ## Remove the virtualenv and caches (not the VMs: see sandbox-down)
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache dist
