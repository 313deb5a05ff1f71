VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu gpu-wheels bench lint install clean readme matrix

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

# wheels for benchmarks/gpu_check.sh on an offline GPU machine (Python 3.12, x86_64): WHEELS=.gpu-wheels
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps -d .gpu-wheels --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		--platform any onnxscript onnx-ir ml-dtypes pycocotools "faster-coco-eval>=1.8,<1.9" simplejpeg \
		onnxconverter-common pytest pluggy iniconfig pytest-xdist execnet

bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH)

readme: $(STAMP)
	$(VENV)/bin/harness zoo sysnoise-table --readme README.md

# the README's acceptance matrix: every row (hours on 2 cores); its JSON in benchmarks/
matrix: $(STAMP)
	PYTHONPATH=tests/plugins $(VENV)/bin/harness matrix --json benchmarks/matrix.json --readme README.md

lint: $(STAMP)
	$(PY) -m compileall -q harness backends models tests benchmarks
	$(PY) -m pip check

clean:
	rm -rf $(VENV) build *.egg-info
