# Two commands a newcomer needs: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this machine keeps on disk; users elsewhere may take any torch>=2.3.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv test test-all lint demo bench clean
LINT_PATHS := src tests benchmarks scripts

$(BIN)/madapt: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN) 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import madapt, torch, open_clip, timm, transformers" 
	touch $(BIN)/madapt

venv: $(BIN)/madapt

test: venv
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

demo: venv
	$(BIN)/madapt demo

bench: venv
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
