# fastgw — two commands: `make run` (demo gateway + demo backends), `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastgw-installed

.PHONY: run test build install lint bench bench-smoke bench-instructions bench-targets annotate clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q --upgrade pip "setuptools>=77"
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Rebuild the Cython extension in place (fast path while editing _core.pyx and its parts).
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

run: build
	$(BIN)/fastgw demo

test: build
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check fastgw tests bench

bench: build
	$(BIN)/python bench/run.py

bench-smoke: build
	$(BIN)/python bench/run.py --smoke

bench-instructions: build
	$(BIN)/python bench/instructions.py --scenarios plain,post,gateway,routes,close

# The performance targets, run by run, over the saved results (bench/results, docs/bench-history).
bench-targets: $(STAMP)
	$(BIN)/python bench/targets.py --brief

annotate: $(STAMP)
	$(BIN)/cython -a -3 fastgw/_core.pyx -o /tmp/_core_annotated.c && mv /tmp/_core_annotated.html fastgw/_core.html && echo "open fastgw/_core.html"

clean:
	rm -rf build fastgw/_core.c fastgw/*.so fastgw/*.html
