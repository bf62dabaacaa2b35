# The two commands of the README: `make demo` and `make test`. Both create .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean browser

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,fmu,postgres,s3,interop,files,opcua,jax,ray]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/livetwin demo

test: $(BIN)/.installed browser
	$(BIN)/ruff check livetwin tests benchmarks
	$(BIN)/pytest -q

# The dashboard tests drive Debian's Chromium (never a downloaded browser); without it they
# skip, except under CI=true where they fail.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the browser tests will skip"; }

lint: $(BIN)/.installed
	$(BIN)/ruff check livetwin tests benchmarks
	$(BIN)/ruff format --check livetwin tests benchmarks

# The benchmarks also need what they compare against: FilterPy (the `bench` extra).
bench: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[bench,jax]'
	$(BIN)/livetwin bench ingest --json
	$(BIN)/livetwin bench replay --json
	$(BIN)/livetwin bench calibrate --json

clean:
	rm -rf $(VENV) livetwin-data .pytest_cache
