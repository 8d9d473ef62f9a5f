# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install promtool wrk demo test test-fast bench soak check-kernels lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/bemq demo

# promtool (Debian's prometheus package) checks the alert rules and runs the live-Prometheus test;
# without it, and outside CI, those tests skip and say so.
promtool:
	@command -v promtool >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& echo "installing Debian's prometheus package (promtool)" \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
		>/dev/null 2>&1 || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
		>/dev/null; }; } || echo "promtool unavailable: monitoring tests will skip"

# wrk (Debian's package) generates bench/overhead.py's online load; without it the benchmark
# falls back to async httpx, which saturates a core of this machine before the gateway does.
wrk:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& echo "installing Debian's wrk package" \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk \
		>/dev/null 2>&1 || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk \
		>/dev/null; }; } || echo "wrk unavailable: bench/overhead.py uses httpx"

test: install promtool
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q tests/unit

bench: install wrk
	mkdir -p bench-results
	$(PY) bench/overhead.py --json bench-results/overhead.json
	$(PY) bench/pipeline.py --json bench-results/pipeline.json
	$(PY) bench/kernels.py --json bench-results/kernels.json
	$(PY) bench/online.py --json bench-results/online.json
	$(PY) bench/recovery.py --json bench-results/recovery.json

soak: install
	mkdir -p bench-results
	$(PY) bench/soak.py --json bench-results/soak.json
	$(PY) bench/soak.py --json bench-results/soak-retention.json --retention 120 --min-seconds 600 --jobs 1

check-kernels: install
	$(PY) -m kernels.check --tol 1e-3

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf var bench-results .pytest_cache
