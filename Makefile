# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch; on a CUDA machine override: make install TORCH_SPEC="torch==2.13.0"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all lint format bench clean docs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m deepspike.demo
	$(PY) sort.py out=outputs/demo_sort overwrite=true

test: install docs
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/loader.py && $(PY) bench/corpus.py && $(PY) bench/sort.py && $(PY) bench/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

docs: install
	$(VENV)/bin/mkdocs build --strict --quiet
