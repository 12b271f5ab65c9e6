# uav: harvest → train → eval. Every target that needs Python depends on `setup`, so any of them works as
# the first command on a fresh machine.
SHELL := /bin/bash
PY    := .venv/bin/python
UAV   := .venv/bin/uav
STAMP := .venv/.uav-installed

DONOR   ?= smollm2-135m
DATA    ?= demo
LAYERS  ?=
STORE   ?= stores/$(DONOR)
RECIPE  ?= pipelines/recipes/demo.toml
RUN     ?= runs/self
DECODER ?= smollm2-135m
NPROC   ?= 1
DEVICE_MAP ?=
SEEDS   ?=
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-all stress harvest train eval demo bench gpu-check clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel on our machines: installing anything that depends on torch (peft, …) into an
# environment without it pulls a multi-GB CUDA build. The constraints file keeps every later install on that wheel.
$(STAMP): pyproject.toml constraints.txt requirements-embedded.txt
	test -x .venv/bin/python || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[data,dev]'
	$(PY) -m pip install -q --no-deps -r requirements-embedded.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# Both suites, then the GPU self-check in its small CPU form (what CI runs): a GPU box's full check is `make gpu-check`
test-all: test
	$(UAV) gpu-check --form cpu

# The kill/resume test files N times in a row beside LOAD busy processes, every run's failures kept in stress.log
N    ?= 20
LOAD ?= 2
stress: setup
	LOAD=$(LOAD) .ci/stress $(N)

# NPROC=N: N processes under torchrun (one per GPU; gloo on CPU). Same store / same run as one process.
# DEVICE_MAP=auto: one harvest process spreads a donor too large for one GPU over every GPU of the node.
LAUNCH = $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone --nproc-per-node $(NPROC) -m)

harvest: setup
	$(if $(LAUNCH),$(LAUNCH) uav_cache.harvest,$(UAV) harvest) --donor $(DONOR) --data $(DATA) --out $(STORE) $(if $(LAYERS),--layers $(LAYERS)) $(if $(DEVICE_MAP),--device-map $(DEVICE_MAP))

train: setup
	$(if $(LAUNCH),$(LAUNCH) uav_train.trainer,$(UAV) train) --recipe $(RECIPE) --store $(STORE) --decoder $(DECODER) --out $(RUN)

eval: setup
	$(UAV) eval $(RUN)

demo: setup
	$(UAV) demo --recipe $(RECIPE) $(if $(SEEDS),--seeds $(SEEDS))

bench: setup
	$(UAV) bench

# On a GPU box: ≤ 10 min, one table (what passed, the rates). Without a GPU: its small CPU form (≤ 5 min).
gpu-check: setup
	$(UAV) gpu-check

clean:
	rm -rf stores runs data bench/tmp
