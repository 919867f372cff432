# The two set-up commands of the README are `make run` and `make test`; everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STATE  ?= .state/dev

.PHONY: venv run test test-unit lint proto cluster cluster-down bench clean image lock fuzz fuzz-short soak

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Runs the signer on its embedded default: local CA and a development token issuer in $(STATE),
# then issues one certificate with `meshsigner request` to show it working.
run: venv
	$(VENV)/bin/meshsigner dev --state-dir $(STATE)

# The whole suite: unit, end-to-end and cluster tests (builds the test control plane on first use).
test: venv
	bash tests/cluster/build.sh
	bash tests/istio_peer/build.sh >/dev/null   # Istio's CA client (conformance peer), cached like the plane
	bash tests/helm/build-helm.sh >/dev/null    # helm for the chart tests, cached too
	bash tests/istio/build.sh >/dev/null        # istiod (pilot-discovery) and pilot-agent, cached too
	bash image/install-tools.sh                 # mmdebstrap, umoci, skopeo for the image tests (Debian packages)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: venv
	MESHSIGNER_SKIP_CLUSTER_TESTS=1 $(PY) -m pytest -q -m 'not cluster and not image' $(PYTEST_ARGS)

# ruff, mypy (strict on signer/, policies/, bridge/; default on tests/) and the import contract (pyproject.toml).
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

proto: venv
	$(PY) -m proto.generate

cluster: venv
	bash tests/cluster/up.sh

cluster-down:
	bash tests/cluster/down.sh

bench: venv
	$(PY) bench/bench_local_ca.py

# Fuzzing (tests/fuzz/README.md): every target for FUZZ_INPUTS inputs with atheris (coverage-guided); reports execs,
# coverage and findings. `make test` runs the short pass (tests/fuzz) only.
FUZZ_INPUTS ?= 100000
fuzz: venv
	$(PY) -m tests.fuzz.run --target all --inputs $(FUZZ_INPUTS)

fuzz-short: venv
	$(PY) -m pytest -q tests/fuzz

# Soak (docs/faults.md): serve --signer local at a steady rate for SOAK_MINUTES, RSS and open fds sampled;
# fails when either keeps growing. `make test` runs its 60 s version (tests/soak).
SOAK_MINUTES ?= 30
soak: venv
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

# The OCI image archive without a container engine (root, mmdebstrap, umoci; Debian mirror + PyPI). Prints its path.
image:
	bash image/install-tools.sh
	bash image/build.sh

# Re-resolve image/requirements.lock (pip-compile --generate-hashes, in its own cached venv).
lock:
	bash image/lock.sh

clean:
	rm -rf $(VENV) .state .pytest_cache .ruff_cache
