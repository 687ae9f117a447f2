# Developer entry points. `make test` is the README's test command and what CI runs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test test-fast test-installed docs lint demo bench web-runtime

install: web-runtime
	@command -v c++ >/dev/null || { echo "make install: no C++ compiler; the test extra builds pydensecrf2 from source: apt-get install g++ python3-dev"; exit 1; }
	$(PIP) install -q -e ".[test]"

# The browser runtime of the live page and `deeplab export --format web` (onnxruntime-web,
# from the npm registry at the version package-lock.json pins), copied into the package's
# static files; wheels built after it carry it. Without npm the live page falls back to
# segmenting on the server, and the browser-runtime tests are skipped with the reason.
WEB_RUNTIME := deeplab/serve/static/ort
ORT_FILES := ort.wasm.min.mjs ort-wasm-simd-threaded.wasm ort-wasm-simd-threaded.mjs \
	ort.webgpu.min.mjs ort-wasm-simd-threaded.jsep.wasm ort-wasm-simd-threaded.jsep.mjs
web-runtime:
	@if ! command -v npm >/dev/null; then echo "make web-runtime: npm not found; the live page will segment on the server (apt-get install npm)"; \
	elif [ ! -f $(WEB_RUNTIME)/VERSION ] || ! (cd $(WEB_RUNTIME) && ls $(ORT_FILES) >/dev/null 2>&1) || ! grep -q "$$(node -p 'require("./package-lock.json").packages["node_modules/onnxruntime-web"].version')" $(WEB_RUNTIME)/VERSION; then \
		npm ci --no-audit --no-fund --silent && mkdir -p $(WEB_RUNTIME) && \
		for f in $(ORT_FILES); do cp node_modules/onnxruntime-web/dist/$$f $(WEB_RUNTIME)/; done && \
		node -p 'require("./node_modules/onnxruntime-web/package.json").version' > $(WEB_RUNTIME)/VERSION && \
		cp deeplab/serve/ORT_LICENSE $(WEB_RUNTIME)/LICENSE && echo "onnxruntime-web $$(cat $(WEB_RUNTIME)/VERSION) copied into $(WEB_RUNTIME)"; \
	fi

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
