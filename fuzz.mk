# Fuzzing targets (tests/fuzz/README.md). The Makefile may `include fuzz.mk`, or copy these lines.
.PHONY: fuzz fuzz-short
FUZZ_INPUTS ?= 100000

# Full pass: >= 100 000 inputs per target, coverage-guided (atheris); reports execs, coverage, findings, time.
fuzz: venv
	$(PY) -m pip install -q 'atheris>=3,<4'
	$(PY) -m tests.fuzz.run --target all --inputs $(FUZZ_INPUTS)

# The short pass that every pytest run includes, on its own.
fuzz-short: venv
	$(PY) -m pytest -q tests/fuzz
