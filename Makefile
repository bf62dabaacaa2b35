# The two commands of the README: `make demo` and `make test`. Both create .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/livetwin demo

test: $(BIN)/.installed
	$(BIN)/ruff check livetwin tests benchmarks
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check livetwin tests benchmarks
	$(BIN)/ruff format --check livetwin tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/livetwin bench ingest --json
	$(BIN)/livetwin bench replay --json

clean:
	rm -rf $(VENV) livetwin-data .pytest_cache
