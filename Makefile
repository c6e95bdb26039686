# make demo: videos + metadata of manifests/demo.jsonl under out/demo (tiny models, CPU)
# make test: the test suite (real local Ray, real tiny pipelines)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test clean

venv: $(STAMP)

# Reinstalls only when pyproject.toml changes: quick when nothing did.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/raypipe run manifests/demo.jsonl --out out/demo

test: venv
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf out .pytest_cache
