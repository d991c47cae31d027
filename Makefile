# Two commands on a fresh machine: `make demo` and `make test` (each sets everything up first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[clickhouse,dev]'
	touch $@

demo: setup
	$(BIN)/zhiying demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

test: lint
	$(BIN)/pytest -n 2 --dist loadfile -q

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .zhiying .pytest_cache .mypy_cache .ruff_cache
