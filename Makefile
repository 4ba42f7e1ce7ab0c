# The two set-up commands of the README: `make demo` and `make test`. Both create .venv as needed.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/llmkit demo

# Two workers (measured faster on 2 quiet cores: DEVELOPERS.md, CI time); PYTEST_ARGS=-n0 for one process.
test: setup
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/transformers_overhead.py --tokens 64 --repeats 5 --out benchmarks/results/transformers_overhead.json
