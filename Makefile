# owtgpt: every target wraps a `python -m pipeline|model|trainer` command (see README.md).
# Variables: SOURCE, OUT, WORKERS (shards); DATA, PRESET, NGPU, RESUME, RUN (train);
# SOURCE, DATA, FT_RUN, RESUME (finetune: SOURCE is then the weights); CKPT, PROMPT (sample);
# CKPT, TASKS, EVAL_ARGS (eval).

PY      ?= .venv/bin/python
VENV    ?= .venv
SOURCE  ?= Skylion007/openwebtext
OUT     ?= shards
WORKERS ?= $(shell nproc)
DATA    ?= shards
PRESET  ?= gpt2
NGPU    ?= $(shell nvidia-smi -L 2>/dev/null | wc -l | awk '{print ($$1 > 0) ? $$1 : 1}')
RUN     ?= runs/$(PRESET)
RESUME  ?=
FT_RUN  ?= runs/finetune
CKPT    ?= $(RUN)
SCALE_SOURCE ?= ../shared/corpora/imdb-reviews.jsonl.zst
PROMPT  ?= The meaning of life is
TRAIN_ARGS ?=
TASKS   ?= hellaswag,lambada,wikitext2,wikitext103
EVAL_ARGS ?=
BENCH_ARGS ?=
DEMO_SOURCE ?= .

export TIKTOKEN_CACHE_DIR ?= $(abspath ../shared/tiktoken-cache)

.PHONY: help setup shards stats verify test test-slow test-all lint typecheck bench bench-scale bench-eval bench-train bench-recipe train finetune sample eval demo clean-demo gpu-check gpu-check-prepare

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# torch's one pin (pyproject.toml states only a lower bound). It is installed first, by exact version, so
# that `pip install -e .` finds torch satisfied and never swaps it: the tests and CI run on 2.13.0's CPU
# wheel (2.13.0+cpu, from this machine's wheel mirror); left to pyproject's torch>=2.4, pip would resolve
# the newest PyPI release, whose Linux wheels pull the CUDA libraries (several GB of nvidia-* packages).
# On a GPU machine pass a CUDA build of the same version: make setup TORCH='torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cuXXX' (the index for your driver).
TORCH   ?= torch==2.13.0

setup:  ## create .venv with CPU torch 2.13.0 and owtgpt[dev] (editable)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'

shards:  ## tokenize SOURCE (default: OpenWebText from the hub) into OUT (default: shards/)
	$(PY) -m pipeline build $(SOURCE) --out $(OUT) --workers $(WORKERS)

stats:  ## statistics of the shards in OUT
	$(PY) -m pipeline stats $(OUT)

verify:  ## full checksum and content validation of the shards in OUT
	$(PY) -m pipeline verify $(OUT)

# The suites run on TEST_WORKERS pytest-xdist processes (one per core by default): most tests wait on a
# child `python -m ...` process, so two workers keep both cores busy where one would leave one idle.
TEST_WORKERS ?= $(shell nproc)

test:  ## the default test suite (no slow or GPU tests; under 4 min on 2 CPU cores)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not gpu"

test-slow:  ## only the slow-marked tests
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "slow and not gpu"

test-all:  ## everything, GPU tests included where a GPU is present
	$(PY) -m pytest -q

lint:  ## ruff check and ruff format --check (CI runs this)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:  ## mypy over pipeline/, model/ and trainer/ (settings in pyproject.toml; CI runs this)
	$(PY) -m mypy

bench:  ## CPU benchmarks: tokenize, stats, sampler, generation (ratios against in-process baselines)
	$(PY) bench/tokenize_throughput.py
	$(PY) bench/stats.py
	$(PY) bench/sampler.py
	$(PY) bench/generate.py

bench-scale:  ## scale benchmarks (issue 13): stats memory and cold sampler on 1B random tokens (2 GB in /tmp), build CPU split, parquet memory, 5,000 shards
	$(PY) bench/stats_rss.py --tokens 1000000000 --shards 10 --keep
	$(PY) bench/sampler_cold.py --tokens 1000000000 --shards 10
	$(PY) bench/build_cpu.py --source $(SCALE_SOURCE)
	$(PY) bench/parquet_memory.py --mb 300
	$(PY) bench/many_shards.py --source $(SCALE_SOURCE)

bench-eval:  ## `model eval` vs lm-evaluation-harness on the same CPU, model and items (needs pip install lm-eval)
	$(PY) bench/eval.py

bench-train:  ## GPU trainer benchmark: tokens/s, MFU, peak memory for gpt2 124M
	$(PY) bench/train_gpu.py

bench-recipe:  ## time to loss, AdamW vs Muon (+ WSD, permutation): CPU proxy on imdb, <= 15 min; BENCH_ARGS="--tune"
	$(PY) bench/time_to_loss.py --corpus $(SCALE_SOURCE) $(BENCH_ARGS)

# The launches go through trainer.launch (torchrun's arguments; Ctrl-C/SIGTERM: every rank saves a
# checkpoint and exits 0). RESUME=1 takes the run's recorded settings from RUN/config.json, passing
# --data/--preset only when given here. Recipes hold no quotes so make runs them without a shell
# (a shell between make and the launcher would turn its clean exit after Ctrl-C into "Interrupt").
given = $(if $(filter command line environment,$(origin $(1))),$(2) $($(1)))

train:  ## train PRESET on DATA with torchrun over NGPU GPUs (RESUME=1 to continue RUN as recorded)
	$(PY) -m trainer.launch --standalone --nproc_per_node=$(NGPU) -m trainer --out $(RUN) \
		$(if $(RESUME),--resume $(call given,DATA,--data) $(call given,PRESET,--preset),--data $(DATA) \
		--preset $(PRESET)) $(TRAIN_ARGS)

finetune:  ## fine-tune SOURCE (run, .pt, HF folder or hub id like gpt2) on DATA into FT_RUN (RESUME=1 to continue)
	$(if $(RESUME),,$(if $(filter command line environment,$(origin SOURCE)),,$(error make finetune needs \
		SOURCE=RUN_OR_CHECKPOINT_OR_HF_FOLDER_OR_HUB_ID (the weights to start from) and DATA=SHARDS)))
	$(PY) -m trainer.launch --standalone --nproc_per_node=$(NGPU) -m trainer --out $(FT_RUN) \
		$(if $(RESUME),--resume $(call given,DATA,--data),--data $(DATA) --preset finetune --init-from $(SOURCE)) \
		$(TRAIN_ARGS)

sample:  ## generate from the newest checkpoint in RUN (or CKPT=path)
	$(PY) -m model sample --checkpoint $(CKPT) --prompt "$(PROMPT)"

eval:  ## zero-shot TASKS (comma list; default the GPT-2 paper's + hellaswag) on CKPT; EVAL_ARGS="--limit 100"
	$(PY) -m model eval --checkpoint $(CKPT) --task $(TASKS) $(EVAL_ARGS)

demo:  ## offline end to end on CPU: shards from DEMO_SOURCE, stats, train tiny, sample
	$(PY) -m pipeline build $(DEMO_SOURCE) --out demo/shards --workers $(WORKERS) \
		--source-format text --text-glob '*.md,*.py' --val-fraction 0.1 --seed 0 --overwrite
	$(PY) -m pipeline stats demo/shards --top 10
	$(PY) -m trainer --data demo/shards --preset demo --out demo/run --overwrite
	$(PY) -m model sample --checkpoint demo/run --prompt "def " --max-new-tokens 80 --seed 0

clean-demo:
	rm -rf demo

gpu-check:  ## prepared GPU check (bench/gpu_check.sh; DRY=1 for the CPU dry run, STAGES="smallgpu" for a subset); `make gpu-check-prepare` first
	PY=$(PY) bench/gpu_check.sh $(if $(DRY),--dry-run) $(if $(STAGES),--stages "$(STAGES)")

gpu-check-prepare:  ## fill .gpu-carry/ (tokenizer files, wheels) for the GPU machine
	PY=$(PY) bench/gpu_check.sh prepare
