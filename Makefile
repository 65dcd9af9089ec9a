# Every target runs inside .venv, created and filled by `setup` on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
CLI := $(BIN)/bgm-export

# The artifact layout is the package's (exporter/config.py), read with the system Python.
LAYOUT := $(shell PYTHONPATH=. $(PYTHON) -m exporter.config)
ONNX := $(word 1,$(LAYOUT))
IR32 := $(word 2,$(LAYOUT))
IR16 := $(word 3,$(LAYOUT))
IR8 := $(word 4,$(LAYOUT))
SOURCES := $(shell find exporter -name '*.py' 2>/dev/null)
WEIGHTS := $(wildcard checkpoints/*.pth)

.PHONY: setup export verify bench test style style-check clean

setup: $(STAMP) $(NPM_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,serve]'
	touch $(STAMP)

# ONNX Runtime Web for `bgm-export web`, exactly as package-lock.json pins it (the sites copy it
# from node_modules/; nothing is fetched when a site is built). No install scripts: none is needed.
# Without npm the rest of the set-up still holds; `web` then says what it lacks.
$(NPM_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --ignore-scripts --no-audit --no-fund && touch $(NPM_STAMP); \
	else \
		echo "npm not found: skipping ONNX Runtime Web (bgm-export web needs it: install Node.js, then make setup)"; \
	fi

# The main job: ONNX, IR FP32, IR FP16 and IR INT8 from the resolved checkpoint.
export: setup
	$(CLI) onnx --output $(ONNX)
	$(CLI) ir --onnx $(ONNX) --precision FP32 --output $(IR32)
	$(CLI) ir --onnx $(ONNX) --precision FP16 --output $(IR16)
	$(CLI) ir --onnx $(ONNX) --precision INT8 --output $(IR8)

$(ONNX): $(STAMP) $(SOURCES) $(WEIGHTS)
	$(CLI) onnx --output $@
# An IR is its .xml and its .bin: either missing or stale remakes both.
$(IR32) $(IR32:.xml=.bin): $(ONNX)
	$(CLI) ir --onnx $(ONNX) --precision FP32 --output $(IR32)
$(IR16) $(IR16:.xml=.bin): $(ONNX)
	$(CLI) ir --onnx $(ONNX) --precision FP16 --output $(IR16)
$(IR8) $(IR8:.xml=.bin): $(ONNX)
	$(CLI) ir --onnx $(ONNX) --precision INT8 --output $(IR8)

# Re-exports what is missing or older than the code or the weights, then checks parity.
verify: $(ONNX) $(foreach ir,$(IR32) $(IR16) $(IR8),$(ir) $(ir:.xml=.bin))
	$(CLI) verify $(ONNX) $(IR32) $(IR16) $(IR8)

# Exports its own variants (ours and the original recipe's) into a scratch folder.
bench: setup
	$(CLI) bench --preset 720p --profile

test: setup
	$(BIN)/python -m pytest

style: setup
	$(BIN)/ruff format exporter tests
	$(BIN)/ruff check --fix exporter tests

style-check: setup
	$(BIN)/ruff format --check exporter tests
	$(BIN)/ruff check exporter tests

clean:
	rm -rf models .pytest_cache
