# eoforge: the two commands are `make demo` and `make test`.
VENV        ?= .venv
PY          := $(VENV)/bin/python
EOFORGE     := $(VENV)/bin/eoforge
EOFORGE_HOME ?= $(CURDIR)/.eoforge
export EOFORGE_HOME
STAMP       := $(VENV)/.eoforge-installed
DEMO_SCENES ?= 16
DEMO_POOL_SCENES ?= 24

.PHONY: venv demo test lint bench up down status clean

venv: $(STAMP)
$(STAMP): pyproject.toml scripts/bootstrap.sh
	VENV=$(VENV) bash scripts/bootstrap.sh

## make demo: local stack + demo catalog (labelled scenes + an unlabelled pool) + chip plans + SimCLR
## pretraining on the pool, then the label-efficiency sweep (every arm of the protocol) that ends with the
## results table, the label-fraction PNG and the models:/...@champion URI; then the champion maps a test scene
## (classes, probabilities) and the SSL backbone writes its embedding field, as COGs + STAC, with a quicklook PNG
## beside the labels; the last line is `predictions: <collection.json>`.
## The stack runs with Ray token auth and MLflow basic-auth (secrets in $(EOFORGE_HOME)/secrets/): `ray job submit`
## presents the token from its file; the jobs inherit the MLflow login from the Ray head (`eoforge up`).
SUBMIT = PATH=$(CURDIR)/$(VENV)/bin:$$PATH RAY_ADDRESS=$$($(EOFORGE) status --field ray_dashboard_url) \
	  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(EOFORGE_HOME)/secrets/ray-token \
	  ray job submit --working-dir .
demo: venv
	$(EOFORGE) up
	$(EOFORGE) catalog demo --out $(EOFORGE_HOME)/demo-catalog --scenes $(DEMO_SCENES) --seed 0 \
	  --pool-scenes $(DEMO_POOL_SCENES)
	$(EOFORGE) plan --config configs/data/demo.yaml --out $(EOFORGE_HOME)/demo/plan.parquet
	$(EOFORGE) plan --config configs/data/demo-pool.yaml --out $(EOFORGE_HOME)/demo/pool-plan.parquet
	$(SUBMIT) -- python jobs/pretrain.py --config configs/pretrain/demo.yaml
	$(SUBMIT) -- python jobs/sweep.py --config configs/sweep/demo.yaml
	$(SUBMIT) -- python jobs/predict.py --config configs/predict/demo.yaml
	$(EOFORGE) predict quicklook --collection $(EOFORGE_HOME)/demo/predictions/collection.json \
	  --reference $(EOFORGE_HOME)/demo-catalog/data/dfc-labels/DFC_DEMO_003/labels.tif \
	  --out $(EOFORGE_HOME)/demo/predictions/quicklook.png

## make test: lint, then unit and integration tests on real Ray / MLflow / STAC API processes.
test: venv
	$(VENV)/bin/ruff check platform jobs tests bench
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check platform jobs tests bench
	$(VENV)/bin/ruff format --check platform jobs tests bench

## make bench: chip reading, streaming vs TorchGeo and the decode limit, memory; JSON lines (docs/benchmarks.md).
bench: venv
	@$(PY) -c "import torchgeo" 2>/dev/null || EXTRAS=test,bench VENV=$(VENV) bash scripts/bootstrap.sh
	$(PY) bench/chip_throughput.py --ray
	$(PY) bench/stream.py
	$(PY) bench/stream_memory.py

up: venv
	$(EOFORGE) up
down: venv
	$(EOFORGE) down
status: venv
	$(EOFORGE) status

clean:
	-$(EOFORGE) down
	rm -rf $(EOFORGE_HOME)
