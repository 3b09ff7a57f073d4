# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
MEDMEM_DATA_ROOT ?= $(abspath ../shared/datasets)
export MEDMEM_DATA_ROOT

.PHONY: install test test-slow lint demo manifests clean label-env label-server

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The MONAI Label app's own environment (MONAI Label 0.8.5 needs numpy<2 and pydicom<3): see
# apps/medmem_label/requirements.txt for why monailabel goes in with --no-deps.
LABEL_VENV ?= .venv-label
$(LABEL_VENV)/.installed: apps/medmem_label/requirements.txt pyproject.toml
	test -x $(LABEL_VENV)/bin/python || python3 -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(LABEL_VENV)/bin/python -m pip install -q -r apps/medmem_label/requirements.txt
	$(LABEL_VENV)/bin/python -m pip install -q --no-deps monailabel==0.8.5
	$(LABEL_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

label-env: $(LABEL_VENV)/.installed

PORT ?= 8000
label-server: $(LABEL_VENV)/.installed
	@test -n "$(MODEL_DIR)" -a -n "$(STUDIES)" || { echo "usage: make label-server MODEL_DIR=<bundle run>/models STUDIES=<images folder> [PORT=8000]"; exit 2; }
	MONAI_LABEL_SESSION_PATH="$(abspath $(MODEL_DIR))/label_sessions" MONAI_LABEL_TRACKING_ENABLED=false \
	  $(LABEL_VENV)/bin/monailabel start_server --app apps/medmem_label --studies "$(STUDIES)" \
	  --conf model_dir "$(abspath $(MODEL_DIR))" --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.installed $(LABEL_VENV)/.installed
	$(PY) -m pytest -q

# ruff with the settings in pyproject.toml (not part of `make test`; installed on first use)
lint: $(VENV)/.installed
	$(PY) -m pip install -q 'ruff>=0.6'
	$(PY) -m ruff check apps benchmarks medmem tests

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

demo: $(VENV)/.installed
	$(PY) -m medmem.demo --data-root "$(MEDMEM_DATA_ROOT)"

clean:
	rm -rf $(VENV) $(LABEL_VENV) build *.egg-info
