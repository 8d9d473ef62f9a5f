# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install promtool wrk demo test test-fast bench bench-gpu soak check-kernels lint clean

# The runtime alone (what `make demo` needs); the test and benchmark tools on top (`make test`).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/bemq demo

# $(call apt-tool,COMMAND,PACKAGE,WHAT-HAPPENS-WITHOUT): as root on Debian, install the package
# that provides a tool when it is missing; otherwise say what goes without it.
define apt-tool
	@command -v $(1) >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& echo "installing Debian's $(2) package ($(1))" \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) \
		>/dev/null 2>&1 || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) \
		>/dev/null; }; } || echo "$(1) unavailable: $(3)"
endef

# promtool checks the alert rules and runs the live-Prometheus test; without it, and outside CI,
# those tests skip and say so.
promtool:
	$(call apt-tool,promtool,prometheus,monitoring tests will skip)

# wrk generates bench/overhead.py's online load; without it the benchmark falls back to async
# httpx, which saturates a core of this machine before the gateway does.
wrk:
	$(call apt-tool,wrk,wrk,bench/overhead.py uses httpx)

test: install promtool
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q tests/unit

bench: install wrk
	mkdir -p bench-results
	$(PY) bench/overhead.py --json bench-results/overhead.json
	$(PY) bench/pipeline.py --json bench-results/pipeline.json
	$(PY) bench/forward.py --json bench-results/forward.json
	$(PY) bench/kernels.py --json bench-results/kernels.json
	$(PY) bench/kernels.py --model --json bench-results/kernel_model.json
	$(PY) bench/online.py --json bench-results/online.json
	$(PY) bench/overload.py --json bench-results/overload.json
	$(PY) bench/recovery.py --json bench-results/recovery.json
	$(PY) bench/fairness.py --json bench-results/fairness.json
	$(PY) bench/drift.py --json bench-results/drift.json
	$(PY) bench/capacity.py --json bench-results/capacity.json

# On a CUDA host without Redis or PostgreSQL: the host path on the embedded store, where a forward's
# time goes, the no-sync and bf16 checks, and the kernels on the GPU itself.
bench-gpu: install
	mkdir -p bench-results
	$(PY) bench/overhead.py --store embedded --real-items 30000 \
		--json bench-results/overhead-gpu.json
	$(PY) bench/forward.py --json bench-results/forward-gpu.json
	$(VENV)/bin/pytest -q tests/unit/test_forward_syncs.py tests/unit/test_encoder.py
	$(PY) bench/kernels.py --json bench-results/kernels-gpu.json
	$(PY) -m kernels.check

soak: install
	mkdir -p bench-results
	$(PY) bench/soak.py --json bench-results/soak.json
	$(PY) bench/soak.py --json bench-results/soak-retention.json --retention 120 --min-seconds 600 --jobs 0 --steady 80 --job-items 200
	$(PY) bench/soak.py --json bench-results/soak-sqlite.json --retention 120 --min-seconds 600 --jobs 0 --steady 80 --job-items 200 --store sqlite --workers 1

check-kernels: install
	$(PY) -m kernels.check --tol 1e-3
	$(PY) -m kernels.check --aot

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf var bench-results .pytest_cache
