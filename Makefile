# Fresh machine: `make run` or `make test` creates .venv, installs torch first (pinned here so pip
# never pulls a multi-GB CUDA build by resolving the project's torch range), then the project.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.medvlm-installed

.PHONY: setup run test bench sample-data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The phantom model ships inside medvlm (trained only on synthetic phantoms); sample_data/studies are
# phantoms with a truth.csv, so the run ends with how well the model read them.
run: setup
	$(BIN)/medvlm batch sample_data/studies --modality chest_xray --out runs/demo --model phantom
	$(BIN)/medvlm evaluate runs/demo --truth sample_data/studies/truth.csv

test: setup
	$(BIN)/python -m pytest

sample-data: setup
	$(BIN)/python sample_data/make_sample_data.py

clean:
	rm -rf runs .pytest_cache
