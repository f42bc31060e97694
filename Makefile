# gpupool developer commands. `make devnet` and `make test` are all a new user needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: venv devnet demo test test-fast clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build (2.13.0) in the ml extra; see README.
	$(PY) -m pip install --quiet -e '.[ml,dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

devnet: $(STAMP)
	$(VENV)/bin/gpupool devnet

demo: $(STAMP)
	$(VENV)/bin/gpupool demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

.PHONY: bench-overhead bench-streaming bench-routing bench-policies
bench-overhead: $(STAMP)
	$(PY) bench/overhead/run.py
bench-streaming: $(STAMP)
	$(PY) bench/streaming/run.py
bench-routing: $(STAMP)
	$(PY) bench/routing/run.py
bench-policies: $(STAMP)
	$(PY) bench/policies/run.py
