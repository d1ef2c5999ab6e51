# One entry point for people and CI. `make test` is the README's test command; `make demo` runs the main job.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint typecheck demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy sync_format broker
	$(VENV)/bin/mypy workers syncctl mountd

test: lint typecheck
	$(PY) -m pytest

demo: venv
	$(PY) examples/demo_archive.py

bench: venv
	$(PY) bench/bench_format.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
