# Picscale: `make run` serves on embedded defaults, `make test` runs every test.
SHELL := /bin/bash
UV = $(shell bash scripts/install-uv.sh)
HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= data
PYTEST_ARGS ?=

.PHONY: run test lint format bench deps-run deps-test deps-bench clean

.venv/.synced: pyproject.toml uv.lock
	$(UV) sync --frozen
	@touch $@

deps-run:
	@bash scripts/system-deps.sh run

deps-test:
	@bash scripts/system-deps.sh test

deps-bench:
	@bash scripts/system-deps.sh bench

run: deps-run .venv/.synced
	$(UV) run --frozen picscale serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

lint: .venv/.synced
	$(UV) run --frozen ruff format --check src tests bench
	$(UV) run --frozen ruff check src tests bench
	$(UV) run --frozen mypy

# two passes: every test but the lab's on 2 xdist workers, a module's tests on one worker
# (they share its fixtures: servers started once per module), then the lab's (marked serial
# in tests/conftest.py) alone, as they time failovers under load; a pass that selects
# nothing (exit 5) is not a failure
test: deps-test .venv/.synced lint
	$(UV) run --frozen pytest -n 2 --dist loadfile -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(UV) run --frozen pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

format: .venv/.synced
	$(UV) run --frozen ruff format src tests bench
	$(UV) run --frozen ruff check --fix src tests bench

bench: deps-bench .venv/.synced
	$(UV) run --frozen python bench/imaging.py
	$(UV) run --frozen python bench/http_read.py
	$(UV) run --frozen python bench/edit_latency.py

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
