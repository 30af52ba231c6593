# Two entry points: `make run` (set up, then run the default experiment) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
EXP    ?= experiments/int8_vs_fp16.yaml

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: a bare torch requirement on a machine without torch pulls the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(VENV)/bin/qbench run $(EXP)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/gemm.py

clean:
	rm -rf $(VENV) .pytest_cache
