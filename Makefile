# gpupool developer commands. `make devnet` and `make test` are all a new user needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: venv devnet demo test test-fast clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing gpupool into $(VENV) with torch (CPU build), transformers, web3 and the test tools:"
	@echo "a few minutes the first time; pip lists each package as it goes."
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build (2.13.0) in the ml extra; docs/provider.md says how to get a CUDA build.
	bash -o pipefail -c "$(PY) -m pip install -e '.[ml,dev,evm]' | grep --line-buffered -E '^(Collecting|Successfully|ERROR)'"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

devnet: $(STAMP)
	$(VENV)/bin/gpupool devnet

demo: $(STAMP)
	$(VENV)/bin/gpupool demo

# Anvil (a local EVM node) for the ledger's EVM tests: the npm package ships the
# binary in @foundry-rs/anvil-linux-amd64, so nothing is downloaded outside npm.
ANVIL = $(VENV)/anvil/node_modules/.bin/anvil
$(ANVIL):
	npm install --prefix $(VENV)/anvil --no-save --no-audit --no-fund @foundry-rs/anvil@1.7.1

.PHONY: anvil
anvil: $(ANVIL)

# Debian's chromium for the dashboard tests (playwright drives it by path; its own
# browser download cannot reach its host from here). Needs root or sudo-less apt.
CHROMIUM = /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

.PHONY: chromium
chromium: $(CHROMIUM)

# Bytecode first: the suite starts hundreds of gateway, provider and CLI processes, and where
# PYTHONDONTWRITEBYTECODE is set each of them would compile gpupool from source again (~0.1 s of CPU).
test: $(STAMP) $(ANVIL) $(CHROMIUM)
	$(PY) -m compileall -q src tests > /dev/null
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

.PHONY: bench-overhead bench-streaming bench-routing bench-policies bench-ledger bench-scale bench-fleet bench-failover
bench-overhead: $(STAMP)
	$(PY) bench/overhead/run.py
bench-streaming: $(STAMP)
	$(PY) bench/streaming/run.py
bench-routing: $(STAMP)
	$(PY) bench/routing/run.py
bench-policies: $(STAMP)
	$(PY) bench/policies/run.py
bench-ledger: $(STAMP)
	$(PY) bench/ledger/run.py
bench-scale: $(STAMP)
	$(PY) bench/scale/run.py
bench-fleet: $(STAMP)
	$(PY) bench/scale/fleet.py
bench-failover: $(STAMP)
	$(PY) bench/failover/run.py

.PHONY: bench-images
bench-images: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) bench/images/run.py
