# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench soak check-kernels lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/bemq demo

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q tests/unit

bench: install
	mkdir -p bench-results
	$(PY) bench/pipeline.py --json bench-results/pipeline.json
	$(PY) bench/kernels.py --json bench-results/kernels.json

soak: install
	mkdir -p bench-results
	$(PY) bench/soak.py --json bench-results/soak.json

check-kernels: install
	$(PY) -m kernels.check --tol 1e-3

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf var bench-results .pytest_cache
