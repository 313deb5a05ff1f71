VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu bench lint install clean readme

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/harness compare

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal --durations=25

# exactly the GPU tests (CUDA, TensorRT: marked needs_device); each skips with its reason where its device is absent
test-gpu: $(STAMP)
	$(PY) -m pytest -q -rs -m needs_device

bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH)

readme: $(STAMP)
	$(VENV)/bin/harness zoo sysnoise-table --readme README.md

lint: $(STAMP)
	$(PY) -m compileall -q harness backends models tests benchmarks
	$(PY) -m pip check

clean:
	rm -rf $(VENV) build *.egg-info
