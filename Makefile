# One entry point for people and CI. `make test` is the README's test command; `make demo` runs the main job.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The tested releases of every dependency (constraints.txt; `make constraints` re-resolves them).
CONSTRAINTS := constraints.txt
# Programs the tests start as real services, use as real clients or to build test hosts (docker-compose
# validates compose.yaml; no engine is needed), and the Debian packages with them.
SYSTEM_DEPS := redis-server:redis-server ip:iproute2 openssl:openssl rclone:rclone cadaver:cadaver \
	litmus:litmus docker-compose:docker-compose

# Guest toolchains (docs/guest-authors.md): Debian's rustc with the wasm32 standard library, npm's
# assemblyscript in the cache directory `syncctl guest build` looks in; zig comes from the [guest] extra.
RUST_WASM_STD := /usr/lib/rustlib/wasm32-unknown-unknown
ASC_PREFIX := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sync/guest-toolchains/npm
ASSEMBLYSCRIPT := assemblyscript@0.28.20

.PHONY: venv constraints system-deps guest-toolchains test lint typecheck demo bench clean stack-init stack-test

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint $(CONSTRAINTS) -e '.[dev,guest]'
	touch $(STAMP)

# Re-resolves constraints.txt: the newest releases pyproject.toml's ranges allow, in a scratch venv. Run
# `make test` on them (a fresh `make venv` installs them) before committing the file.
constraints:
	rm -rf .venv-constraints
	python3 -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet --upgrade pip
	.venv-constraints/bin/python -m pip install --quiet -e '.[dev,guest]'
	{ sed -n '/^#/p' $(CONSTRAINTS); .venv-constraints/bin/python -m pip freeze --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints

# Installs what is missing with apt when run as root; otherwise names the packages to install.
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do command -v $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep##*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "missing system packages:$$missing (install them, e.g. apt-get install$$missing)"; exit 1; fi; \
	fi

# Installs the rustc wasm32 target and assemblyscript when missing (apt as root; npm into ASC_PREFIX).
guest-toolchains:
	@if [ ! -d $(RUST_WASM_STD) ] || ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc libstd-rust-dev-wasm32 \
				$$(command -v node >/dev/null || echo nodejs) $$(command -v npm >/dev/null || echo npm); \
		else echo "missing guest toolchains: apt-get install rustc libstd-rust-dev-wasm32 nodejs npm"; exit 1; fi; \
	fi
	@[ -x $(ASC_PREFIX)/node_modules/.bin/asc ] || npm install --silent --no-audit --no-fund --prefix $(ASC_PREFIX) $(ASSEMBLYSCRIPT)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy sync_format broker
	$(VENV)/bin/mypy workers syncctl mountd

# The suite on PYTEST_WORKERS processes (pytest-xdist; worksteal evens out the few long tests), with a
# coverage summary of the five packages and its floor (78.6% measured). Coverage counts the code run in the
# pytest processes; the `syncctl`, worker and mountd processes tests start are not traced (that cost ~2.5x).
PYTEST_WORKERS ?= 3
COVERAGE_FLOOR ?= 75
test: system-deps guest-toolchains lint typecheck
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --cov --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR)

# `syncctl demo`: builds ./sync-demo/store and serves it at http://127.0.0.1:4918 (SYNC_PORT) with live
# refreshes until Ctrl-C.
demo: venv
	$(PY) -m syncctl demo

# Runs every benchmark in bench/ and writes their figures, and the machine's, to docs/benchmarks.md.
bench: venv
	$(PY) bench/report.py

# The compose stack's secrets: writes .env (Redis password, Flower login) unless it exists.
stack-init:
	deploy/stack-init.sh .env

# The compose stack under a private Docker engine, checked as a user would (root, Debian; ~10 min).
stack-test:
	bash deploy/test-stack.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
