# Developer entry points. `make test` is the README's test command and what CI runs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test test-fast lint demo bench

install:
	@command -v c++ >/dev/null || { echo "make install: no C++ compiler; the test extra builds pydensecrf2 from source: apt-get install g++ python3-dev"; exit 1; }
	$(PIP) install -q -e ".[test]"

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

# The quick loop while editing: everything but the tests marked slow (big backbones,
# several processes, real-data parity); `make test` (and CI) runs them all.
test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	$(PIP) install -q -e .
	deeplab predict examples/astronaut.jpg --out out

bench:
	$(PYTHON) benchmarks/bench_models.py
