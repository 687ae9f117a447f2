# Developer entry points. `make test` is the README's test command and what CI runs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test test-fast test-installed docs lint demo bench

install:
	@command -v c++ >/dev/null || { echo "make install: no C++ compiler; the test extra builds pydensecrf2 from source: apt-get install g++ python3-dev"; exit 1; }
	$(PIP) install -q -e ".[test]"

# Lint, every test, the documentation (warnings are errors) and the package as a user gets it.
test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q
	$(MAKE) docs
	$(MAKE) test-installed

# The quick loop while editing: everything but the tests marked slow (big backbones,
# several processes, real-data parity); `make test` (and CI) runs them all.
test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

# Build the sdist and wheel, install the wheel into a fresh venv and run the README's
# commands from an empty folder (tests/installed_package.py).
test-installed:
	$(PYTHON) tests/installed_package.py

# The documentation site from docs/ and the docstrings, into site/.
docs:
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo:
	$(PIP) install -q -e ".[export]"
	deeplab examples --out photos && deeplab predict photos/astronaut.jpg --out out

bench:
	$(PYTHON) benchmarks/bench_models.py
