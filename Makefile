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
# What the CLI already has, as make variables.
SET ?=
DATA_DIR ?=
EXPERIMENT ?=
NO_TRACK ?=
DEVICE ?=
SWEEP ?=
# The serve stage: a running server to load instead of starting one; the machine's price.
ENDPOINT ?=
HARDWARE ?=

SWEEP_FLAGS = --model $(MODEL) \
	$(if $(SCHEMES),--schemes $(SCHEMES)) $(if $(SUITE),--suite $(SUITE)) \
	$(if $(TASKS),--tasks $(TASKS)) $(if $(TASKS_DIR),--tasks-dir $(TASKS_DIR)) \
	$(if $(LIMIT),--limit $(LIMIT)) $(if $(PREQUANTIZED),--prequantized $(PREQUANTIZED)) \
	$(if $(filter 1 true yes,$(FORCE)),--force) $(if $(filter 1 true yes,$(PROFILE)),--profile) \
	$(if $(filter 1 true yes,$(QUIET)),--quiet) --executor $(EXECUTOR) \
	$(if $(SET),--set '$(SET)') $(if $(DEVICE),--set device=$(DEVICE)) \
	$(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) \
	$(if $(filter 1 true yes,$(NO_TRACK)),--no-track) \
	$(if $(ENDPOINT),--endpoint $(ENDPOINT)) $(if $(HARDWARE),--hardware '$(HARDWARE)')

.PHONY: env help setup plan quantize signoff compare sync ui test test-fast lint bench-eval clean gpu-check

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
	@echo "  QUIET=1       only the stage table, the verdicts and errors"
	@echo "  EXECUTOR      local | ray [$(EXECUTOR)]"
	@echo "  PREQUANTIZED  checkpoint (Hub id or path) for SCHEMES=prequantized"
	@echo "  LOG_CHECKPOINT=1  upload quantized checkpoints to MLflow too"
	@echo "  SCHEME        signoff: judge only these schemes"
	@echo "  FORMAT        compare: markdown | csv | json"
	@echo "  RAY=1         setup: also install the Ray extra"
	@echo "  SET           suite overrides, space- or ;-separated: SET='perplexity.seq_len=256 tasks.limit=20'"
	@echo "  DEVICE        auto | cpu | cuda: the suite's device [the suite's]"
	@echo "  DATA_DIR      local data folder for this run (overrides QEVAL_DATA_DIR)"
	@echo "  EXPERIMENT    MLflow experiment [qeval/<model>]"
	@echo "  NO_TRACK=1    do not log to MLflow"
	@echo "  SWEEP         compare: a sweep id [the latest]"
	@echo "  ENDPOINT      serve: the URL of a running OpenAI-compatible server to load instead"
	@echo "  HARDWARE      serve: name=...,price_per_hour=...,memory_gib=... (the model recipe's hardware:)"
	@echo "  (MODEL, SUITE and SCHEMES also take paths to your own YAML recipe files)"
	@echo "  QEVAL_DATA_DIR    local data folder [$(QEVAL_DATA_DIR)]"
	@echo "  QEVAL_RUNS_DIR    where run directories go [./runs]"
	@echo "  MLFLOW_TRACKING_URI  tracking store or server [sqlite:///mlflow.db in the current directory]"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python ## create .venv, install torch (CPU wheel) then qeval, prepare the default model
	# torch first, pinned, so that nothing pulls a multi-GB CUDA build in its place
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev$(if $(filter 1 true yes,$(RAY)),$(comma)ray)]'
	# llama.cpp's tools and libllama for the GGUF schemes, built once into .cache/llama.cpp (about
	# 5 min on 2 cores), and llama-cpp-python on that library. A missing compiler or a failed build
	# is recorded and only the GGUF schemes skip, with the reason.
	$(BIN)/python -m pipelines.llamacpp.build --install-binding
	$(QEVAL) prepare

comma := ,

plan: ## what `make quantize` would run, what is cached and why, estimated time (writes nothing)
	$(QEVAL) plan $(SWEEP_FLAGS)

quantize: ## run the sweep: quantize, evaluate, benchmark, serve, sign off, log to MLflow
	@# A finished sweep succeeds whatever its verdict (0 pass, 1 FAIL, 3 INCONCLUSIVE):
	@# `make signoff` is the target a release gates on. Bad input (2), an unfinished sweep
	@# (4: a stage failed or a scheme was not judged) and a crash (5) fail the target.
	@$(QEVAL) run $(SWEEP_FLAGS); code=$$?; \
	case $$code in \
	  0) echo "sweep finished; sign-off PASS (exit code 0)";; \
	  1) echo "sweep finished; sign-off FAIL: a scheme failed a gate (exit code 1; gate a release on: make signoff MODEL=$(MODEL))";; \
	  3) echo "sweep finished; sign-off INCONCLUSIVE: no gate failed, some could not be decided (exit code 3; gate a release on: make signoff MODEL=$(MODEL))";; \
	  2) echo "sweep refused: bad input (exit code 2); the message above names the fix" >&2; exit 2;; \
	  4) echo "sweep incomplete: a stage failed or a scheme could not be judged (exit code 4); see the stage table above" >&2; exit 4;; \
	  5) echo "qeval crashed (exit code 5): an unexpected error, not a verdict; see the traceback above" >&2; exit 5;; \
	  *) echo "qeval exited with code $$code" >&2; exit $$code;; \
	esac

signoff: ## rerun only the sign-off (exit 0 pass, 1 fail, 3 inconclusive, 4 not judged)
	$(QEVAL) signoff --model $(MODEL) $(if $(SCHEME),--scheme $(SCHEME))

compare: ## print the scheme x metric table read back from MLflow
	$(QEVAL) compare --model $(MODEL) --format $(FORMAT) $(if $(SWEEP),--sweep $(SWEEP)) \
	  $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

sync: ## upload results that could not reach the MLflow server
	$(QEVAL) sync

ui: ## serve the MLflow UI of the tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db) on 127.0.0.1:$(PORT)
	@# The same rule as qeval: MLFLOW_TRACKING_URI if set, else mlflow.db in the current directory.
	@# A tracking server already has a UI: point the browser at it instead.
	@uri="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}"; \
	case "$$uri" in \
	  http://*|https://*) echo "MLFLOW_TRACKING_URI=$$uri is a tracking server: open $$uri in a browser";; \
	  *) exec $(BIN)/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(PORT);; \
	esac

env: ## this machine: CPU, ISA, probe GFLOP/s per dtype, the compute dtype and threads qeval picks, engines
	@$(QEVAL) env --model $(MODEL) $(if $(filter 1 true yes,$(JSON)),--json)

bench-eval: ## perplexity stage vs a bare batched forward pass on the same tokens
	$(QEVAL) bench-eval --model $(MODEL)

gpu-check: ## on a GPU machine: the default model's serve stage on vLLM (QEVAL_VLLM_COMMAND=<vllm-env>/bin/vllm)
	@test -n "$$QEVAL_VLLM_COMMAND" || { echo "set QEVAL_VLLM_COMMAND to the vllm executable of vLLM's own environment (see docs/serving.md)" >&2; exit 2; }
	$(BIN)/pytest -m gpu tests/test_serve_gpu.py -q -x $(TEST_ARGS)

test: ## run the test suite (GPU tests skip without CUDA)
	$(BIN)/pytest $(TEST_ARGS)

test-fast: ## the tests without the slow end-to-end ones
	$(BIN)/pytest -m "not slow" $(TEST_ARGS)

lint: ## ruff
	$(BIN)/ruff check pipelines evals tests

clean: ## remove run directories and the local MLflow store (keeps .venv and the model cache)
	rm -rf runs mlflow.db mlartifacts
