# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
MEDMEM_DATA_ROOT ?= $(abspath ../shared/datasets)
export MEDMEM_DATA_ROOT

.PHONY: install test test-slow demo manifests clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

demo: $(VENV)/.installed
	$(PY) -m medmem.demo --data-root "$(MEDMEM_DATA_ROOT)"

clean:
	rm -rf $(VENV) build *.egg-info
