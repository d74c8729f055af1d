# Two entry points for a fresh machine; each first installs the project into .venv.
#   make demo   runs the workflow on the her2st sections (config/config.yaml)
#   make test   runs the test suite
# pip (not uv) is used because pip takes torch and torchvision from local wheels where a
# machine has them, instead of downloading several GB.

VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CORES ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test dry-run clean-results

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable '.[all,test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --show-failed-logs

dry-run: $(STAMP)
	$(VENV)/bin/snakemake --dry-run --quiet rules

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean-results:
	rm -rf results logs benchmarks
