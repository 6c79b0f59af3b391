# qeval: quantize a model several ways, measure quality and cost, log to MLflow, sign off.
# `make help` lists targets and variables.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
QEVAL := $(BIN)/qeval

# The evaluation data: a local folder laid out like ../shared/data, else the Hub.
QEVAL_DATA_DIR ?= $(wildcard $(CURDIR)/../shared/data)
export QEVAL_DATA_DIR
export GPTQMODEL_CPU_WORKERS ?= $(shell nproc)

MODEL ?= smollm2-135m
SCHEMES ?=
SUITE ?=
TASKS ?=
TASKS_DIR ?=
LIMIT ?=
EXECUTOR ?= local
PREQUANTIZED ?=
SCHEME ?=
FORMAT ?= markdown
PORT ?= 5000
FORCE ?=
PROFILE ?=
QUIET ?=
RAY ?=
TEST_ARGS ?=

SWEEP_FLAGS = --model $(MODEL) \
	$(if $(SCHEMES),--schemes $(SCHEMES)) $(if $(SUITE),--suite $(SUITE)) \
	$(if $(TASKS),--tasks $(TASKS)) $(if $(TASKS_DIR),--tasks-dir $(TASKS_DIR)) \
	$(if $(LIMIT),--limit $(LIMIT)) $(if $(PREQUANTIZED),--prequantized $(PREQUANTIZED)) \
	$(if $(filter 1 true yes,$(FORCE)),--force) $(if $(filter 1 true yes,$(PROFILE)),--profile) \
	$(if $(filter 1 true yes,$(QUIET)),--quiet) --executor $(EXECUTOR)

.PHONY: help setup quantize signoff compare sync ui test test-fast lint bench-eval clean

help: ## list targets and variables
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14 | sed 's/^/  /'
	@echo
	@echo "Variables (make quantize MODEL=llama-7b SCHEMES=gptq,nf4 SUITE=smoke):"
	@echo "  MODEL         recipe alias (recipes/models), Hub id or local checkpoint dir [$(MODEL)]"
	@echo "  SCHEMES       comma-separated schemes, or 'all' [the suite's]"
	@echo "  SUITE         recipes/suites name [the model's default_suite]"
	@echo "  TASKS         lm-eval tasks, comma-separated [the suite's]"
	@echo "  TASKS_DIR     a directory of your own lm-eval task YAMLs"
	@echo "  LIMIT         examples per task, overriding the suite"
	@echo "  FORCE=1       rerun stages whose results are cached"
	@echo "  PROFILE=1     torch.profiler trace per scheme (bench/profile.json, bench/trace.json)"
	@echo "  QUIET=1       no progress bars"
	@echo "  EXECUTOR      local | ray [$(EXECUTOR)]"
	@echo "  PREQUANTIZED  checkpoint (Hub id or path) for SCHEMES=prequantized"
	@echo "  LOG_CHECKPOINT=1  upload quantized checkpoints to MLflow too"
	@echo "  SCHEME        signoff: judge only these schemes"
	@echo "  FORMAT        compare: markdown | csv | json"
	@echo "  RAY=1         setup: also install the Ray extra"
	@echo "  QEVAL_DATA_DIR    local data folder [$(QEVAL_DATA_DIR)]"
	@echo "  QEVAL_RUNS_DIR    where run directories go [./runs]"
	@echo "  MLFLOW_TRACKING_URI  tracking server [sqlite:///./mlflow.db]"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python ## create .venv, install torch (CPU wheel) then qeval, prepare the default model
	# torch first, pinned, so that nothing pulls a multi-GB CUDA build in its place
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev$(if $(filter 1 true yes,$(RAY)),$(comma)ray)]'
	$(QEVAL) prepare

comma := ,

quantize: ## run the sweep: quantize, evaluate, benchmark, sign off, log to MLflow
	@# A finished sweep whose verdict is FAIL (1) or INCONCLUSIVE (3) is not a broken
	@# command: say so and succeed; `make signoff` is the target a release gates on.
	@$(QEVAL) run $(SWEEP_FLAGS); code=$$?; \
	if [ $$code -eq 1 ] || [ $$code -eq 3 ]; then \
	  echo "sweep finished; sign-off exit code $$code (gate a release on: make signoff MODEL=$(MODEL))"; exit 0; \
	fi; exit $$code

signoff: ## rerun only the sign-off from existing results (exit 0 pass, 1 fail, 3 inconclusive)
	$(QEVAL) signoff --model $(MODEL) $(if $(SCHEME),--scheme $(SCHEME))

compare: ## print the scheme x metric table read back from MLflow
	$(QEVAL) compare --model $(MODEL) --format $(FORMAT)

sync: ## upload results that could not reach the MLflow server
	$(QEVAL) sync

ui: ## serve the MLflow UI of the default store on 127.0.0.1:$(PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(PORT)

bench-eval: ## perplexity stage vs a bare batched forward pass on the same tokens
	$(QEVAL) bench-eval --model $(MODEL)

test: ## run the test suite (GPU tests skip without CUDA)
	$(BIN)/pytest $(TEST_ARGS)

test-fast: ## the tests without the slow end-to-end ones
	$(BIN)/pytest -m "not slow" $(TEST_ARGS)

lint: ## ruff
	$(BIN)/ruff check pipelines evals tests

clean: ## remove run directories and the local MLflow store (keeps .venv and the model cache)
	rm -rf runs mlflow.db mlartifacts
