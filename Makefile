# portgate: the two commands a newcomer needs are `make run` and `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
PKGS   := gateway protocols backends

.PHONY: run test setup lint typecheck contracts pytest clean bench

setup:
	@scripts/setup.sh

run: setup
	@scripts/demo.sh

test: setup lint typecheck contracts pytest

lint:
	$(BIN)/ruff check $(PKGS) tests fuzz bench
	$(BIN)/ruff format --check $(PKGS) tests fuzz bench

typecheck:
	$(BIN)/mypy $(PKGS) fuzz bench

contracts:
	$(BIN)/lint-imports

pytest:
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info
