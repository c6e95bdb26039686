# make demo: videos + metadata of manifests/demo.jsonl under out/demo (tiny models, CPU)
# make test: the test suite (real local Ray, real tiny pipelines)
# make lint: ruff's lint and format check (CI runs it before the tests)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint clean

venv: $(STAMP)

# Reinstalls only when pyproject.toml (or this file) changes: quick when nothing did.
# editable_mode=compat: the checkout goes on sys.path as a plain path entry. The default (an import
# hook) loses to a folder named `raypipe` in the directory a run starts from (e.g. `--out raypipe`),
# which Ray puts on its workers' sys.path: they would import that folder instead of the package.
$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: venv
	$(VENV)/bin/raypipe run manifests/demo.jsonl --out out/demo

test: venv
	$(VENV)/bin/python -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf out .pytest_cache
