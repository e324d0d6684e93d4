# s2s: `make serve` and `make test` set up .venv from requirements.lock on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(wildcard proto/s2s/v1/*.proto)

.PHONY: serve test test-postgres lint typecheck imports proto proto-check unit bench clean postgres fuse chromium

BUF_VERSION := 1.75.0
BUF := $(VENV)/buf/node_modules/.bin/buf
PROTOC := $(BIN)/python -m grpc_tools.protoc -I proto

# The console's browser tests (tests/console) write a screenshot of each page here, for review.
CONSOLE_SCREENSHOTS := build/console-screenshots

TS_SUITE := tests/typescript
TS_MODULES := $(VENV)/typescript
TS_STAMP := $(TS_MODULES)/.installed

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/s2s serve

test: $(STAMP) $(TS_STAMP) postgres fuse chromium proto-check lint typecheck imports
	rm -rf $(CONSOLE_SCREENSHOTS)
	S2S_CONSOLE_SCREENSHOTS=$(CONSOLE_SCREENSHOTS) $(BIN)/python -m pytest -q -n 2 --dist loadgroup

# The same suite with every server and store on PostgreSQL (tests/storage_mode.py): one durable
# server per test worker, a database per data directory; tests of LMDB itself are skipped (-rs
# lists them with their reasons). docs/testing.md says what it covers.
test-postgres: $(STAMP) $(TS_STAMP) postgres fuse chromium
	S2S_TEST_STORAGE=postgres S2S_CONSOLE_SCREENSHOTS=$(CONSOLE_SCREENSHOTS) \
		$(BIN)/python -m pytest -q -n 2 --dist loadgroup -rs

lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BUF) lint

# buf ships on npm as a prebuilt binary package; pinned, installed beside the virtualenv.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION)

# The official TypeScript SDK and vitest, exactly as tests/typescript/package-lock.json pins
# them, installed beside the virtualenv (again only when the lock changes); the suite reaches
# them through the tests/typescript/node_modules link.
$(TS_STAMP): $(TS_SUITE)/package.json $(TS_SUITE)/package-lock.json
	rm -rf $(TS_MODULES) && mkdir -p $(TS_MODULES)
	cp $(TS_SUITE)/package.json $(TS_SUITE)/package-lock.json $(TS_MODULES)/
	npm ci --silent --no-audit --no-fund --prefix $(TS_MODULES)
	ln -sfn ../../$(TS_MODULES)/node_modules $(TS_SUITE)/node_modules
	touch $@

# DuckLake's PostgreSQL catalog is tested against a real server that tests/postgres.py starts
# from Debian's binaries; install them only if no version is there. The package's own cluster
# (if it starts at all) is never used: tests run their own initdb on a free port.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=; [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The power-loss test mounts a FUSE filesystem through libfuse 2, which mfusepy loads with
# ctypes; install Debian's library only if it is absent.
fuse:
	@ldconfig -p | grep -q 'libfuse\.so\.2' || { \
		SUDO=; [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse2 >/dev/null; }

# The console's end-to-end tests drive Debian's Chromium headless through Playwright (whose own
# browser downloads this machine cannot reach); install it only if it is absent.
chromium:
	@test -x /usr/bin/chromium || { \
		SUDO=; [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

typecheck: $(STAMP)
	$(BIN)/mypy

# The import contracts of pyproject.toml: no cycles, layers import only downwards.
imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

# Generated code is never edited by hand: regenerate it from proto/.
proto: $(STAMP)
	$(PROTOC) --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_FILES)

# Fails if s2s/v1 does not match what proto/ generates.
proto-check: $(STAMP)
	rm -rf $(VENV)/proto-check && mkdir -p $(VENV)/proto-check
	$(PROTOC) --python_out=$(VENV)/proto-check --pyi_out=$(VENV)/proto-check \
		--grpc_python_out=$(VENV)/proto-check $(PROTO_FILES)
	diff -r -x __pycache__ -x __init__.py $(VENV)/proto-check/s2s/v1 s2s/v1 || \
		{ echo "s2s/v1 is stale: run 'make proto' and commit the result"; exit 1; }

bench: $(STAMP)
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) $(TS_SUITE)/node_modules .mypy_cache .ruff_cache .pytest_cache build
