#!/usr/bin/env bash
# One prepared run that proves owtgpt's CUDA path and records its speed (BENCHMARKS.md, "GPU check").
#
#   bench/gpu_check.sh prepare            # here, with network to PyPI: fills .gpu-carry/ (git-ignored)
#   bench/gpu_check.sh                    # on the GPU machine: all stages, results under $OUT
#   bench/gpu_check.sh --dry-run          # any machine: the same stages on CPU as far as they go
#   bench/gpu_check.sh --stages "train ddp"   # a subset (facts gputests train sampler generate ddp;
#                                             # opt-in: sdpa, flash vs the auto kernel, after train;
#                                             # smallgpu, gpt2 with --micro-batch auto on 8 and 4 GiB
#                                             # caps vs uncapped, cap 300 s;
#                                             # issue 19: recipe, nanogpt, run first when selected)
#   bench/gpu_check.sh --stages "facts recipe nanogpt"   # issue 19's check (about 9 minutes)
#
# Each stage runs under its own `timeout`, so one hang cannot eat the lease; the caps add up to
# 475 s (under 8 minutes). Every stage appends a JSON line to $OUT/summary.jsonl, its output goes to
# $OUT/gpu_check.log, and the last thing printed is the table stage | result | figure.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CARRY="$REPO/.gpu-carry"
PY="${PY:-python3}"
DRY=0
STAGES="facts gputests train sampler generate ddp"

prepare() {
    # The device has no zstandard or datasets and reaches no index; ../shared does not travel.
    set -e
    mkdir -p "$CARRY/whl"
    rm -rf "$CARRY/tiktoken-cache"
    cp -r "$REPO/../shared/tiktoken-cache" "$CARRY/tiktoken-cache"
    rm -f "$CARRY"/whl/*.whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CARRY/whl" "zstandard==0.23.0"
    # issue 19: nanoGPT's own bench.py (the pinned anchor) and imdb shards for the recipe stage: the
    # first 40,000 reviews (~12M tokens, ~24 MB), so that everything carried stays under 64 MiB
    rm -rf "$CARRY/nanoGPT" "$CARRY/imdb-shards"
    mkdir -p "$CARRY/nanoGPT"
    cp "$REPO/../shared/anchors/nanoGPT/"{bench.py,model.py,configurator.py,LICENSE} "$CARRY/nanoGPT/"
    local sub
    sub="$(mktemp -d)/imdb-40k.jsonl"
    "$PY" - "$REPO/../shared/corpora/imdb-reviews.jsonl.zst" "$sub" <<'EOF'
import io, itertools, sys
import zstandard
with open(sys.argv[1], "rb") as f, open(sys.argv[2], "w", encoding="utf-8") as out:
    text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
    out.writelines(itertools.islice(text, 40_000))
EOF
    "$PY" -m pipeline build "$sub" --out "$CARRY/imdb-shards" --val-fraction 0.01 --seed 0
    rm -f "$sub"
    du -sh "$CARRY"
    echo "prepared $CARRY; device call: see BENCHMARKS.md (carry [\".gpu-carry\"])"
}

while [ $# -gt 0 ]; do
    case "$1" in
        prepare) PY="${PY:-python3}"; prepare; exit $? ;;
        --dry-run) DRY=1 ;;
        --stages) STAGES="$2"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

OUT="${OUT:-$REPO/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.jsonl"
: >"$LOG"
: >"$SUMMARY"
WORK="$(mktemp -d /tmp/owtgpt-gpu-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# The carried wheels and tokenizer files, where present; the repository itself goes on PYTHONPATH.
if [ "$DRY" = 0 ] && ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$CARRY"/whl/*.whl >>"$LOG" 2>&1 || echo "wheel install failed (see log)"
fi
export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$CARRY/tiktoken-cache" ]; then
    export TIKTOKEN_CACHE_DIR="$CARRY/tiktoken-cache"
else
    export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$REPO/../shared/tiktoken-cache}"
fi
export PYTHONUNBUFFERED=1
cd "$REPO"

if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to $PY; use --dry-run on a machine without a GPU" >&2
    exit 2
fi

record() {  # record STAGE RESULT FIGURE SECONDS
    "$PY" - "$1" "$2" "$3" "$4" >>"$SUMMARY" <<'EOF'
import json, sys
print(json.dumps({"stage": sys.argv[1], "result": sys.argv[2], "figure": sys.argv[3], "seconds": float(sys.argv[4])}))
EOF
}

stage() {  # stage NAME CAP_SECONDS COMMAND...: run under a cap, log it, return its status
    local name="$1" cap="$2"
    shift 2
    [ "$DRY" = 1 ] && cap=$((cap * 4))  # a CPU dry run is not racing a lease; a loaded 2-core box is slow
    echo "=== $name (cap ${cap}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$cap" "$@" >>"$LOG" 2>&1
    local rc=$?
    STAGE_S=$((SECONDS - t0))
    echo "=== $name: exit $rc after ${STAGE_S}s" | tee -a "$LOG"
    return $rc
}

verdict() {  # verdict RC: ok / timeout / failed
    case "$1" in
        0) echo ok ;;
        124|137) echo "timeout" ;;
        *) echo "failed (exit $1)" ;;
    esac
}

want() { [[ " $STAGES " == *" $1 "* ]]; }

# ------------------------------------------------------------------ 1. device facts
if want facts; then
    nvidia-smi -L >>"$LOG" 2>&1 || echo "nvidia-smi: not available" >>"$LOG"
    stage facts 20 "$PY" - "$OUT/facts.json" <<'EOF'
import json, platform, sys
import torch
f = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda,
     "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    f.update(device=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
             capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())
    f["cudnn"] = torch.backends.cudnn.version()
else:
    f["device"] = "cpu (dry run)"
print(json.dumps(f, indent=1))
json.dump(f, open(sys.argv[1], "w"), indent=1)
EOF
    rc=$?
    fig=$("$PY" -c "import json; f=json.load(open('$OUT/facts.json')); print(f['device'], 'torch', f['torch'], f.get('sm_count', ''), 'SMs', f.get('memory_gib', ''), 'GiB')" 2>/dev/null)
    record facts "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 1b. issue 19: time to loss at 124M
# AdamW vs Muon (bench/time_to_loss.py's gpt2 preset) on the same carried imdb tokens, one seed each:
# tokens-to-target, wall ratio, and the optimizer's share of the step.
if want recipe; then
    if [ "$DRY" = 1 ]; then
        "$PY" -c "
import sys; sys.path.insert(0, 'bench')
from pathlib import Path
from train_gpu import write_synthetic_shards
write_synthetic_shards(Path('$WORK/recipe-shards'), 400_000, 40_000)" >>"$LOG" 2>&1
        rargs=(--device cpu --preset proxy --steps 4 --data "$WORK/recipe-shards" --timing-reps 2)
    else
        rargs=(--device cuda --preset gpt2 --data "$CARRY/imdb-shards")
    fi
    stage recipe 330 "$PY" bench/time_to_loss.py "${rargs[@]}" --seeds 0 --no-ablations --jobs 1 \
        --out "$OUT/recipe"
    rc=$?
    fig=$("$PY" - "$OUT/recipe/results.json" 2>/dev/null <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
m, t = r["summary"]["recipes"]["muon"], r["timing"]
f = lambda x: "not reached" if x is None else f"{x:.2f}x"
print(f"muon/adamw tokens-to-target {f(m['tokens_ratio'])}, wall {f(m['wall_ratio'])}, wall/token "
      f"{m['wall_per_token_ratio']:.2f}x; optimizer share adamw {100 * t['adamw_share']:.1f}% "
      f"muon {100 * t['muon_share']:.1f}% (guard {100 * t['guard_cost']:+.1f}%)")
EOF
)
    record recipe "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 1c. issue 19: nanoGPT's bench.py beside owtgpt
# Same card, model (GPT-2 124M; nanoGPT's bench uses bias=False, owtgpt keeps GPT-2's biases) and batch
# (12 x 1024, one micro-step, AdamW): nanoGPT's own bench.py from the carried anchor, then bench/train_gpu.py.
if want nanogpt; then
    nano() {
        set -e
        rm -rf "$WORK/nanoGPT"
        if [ -d "$CARRY/nanoGPT" ]; then src="$CARRY/nanoGPT"; else src="$REPO/../shared/anchors/nanoGPT"; fi
        cp -r "$src" "$WORK/nanoGPT"
        if [ "$DRY" = 1 ]; then
            nargs=(--device=cpu --compile=False --dtype=float32 --batch_size=2 --block_size=32 --real_data=False)
            oargs=(--device cpu --preset tiny --steps 3 --micro-batch 2 --seq-len 32 --precision fp32
                   --train-tokens 50000 --total-batch-tokens 64 --no-baseline)
        else
            nargs=(--batch_size=12 --compile=True --real_data=False)
            oargs=(--steps 23 --micro-batch 12 --total-batch-tokens 12288 --no-baseline)
        fi
        # its bench.py calls torch.cuda.synchronize(), which a CPU-only torch refuses: a no-op in the dry run
        (cd "$WORK/nanoGPT" && "$PY" -c "
import runpy, sys, torch
if not torch.cuda.is_available():
    torch.cuda.synchronize = lambda *a, **k: None
sys.argv = ['bench.py', *sys.argv[1:]]
sys.path.insert(0, '.')
runpy.run_path('bench.py', run_name='__main__')" "${nargs[@]}") | tee "$OUT/nanogpt_bench.txt"
        "$PY" bench/train_gpu.py "${oargs[@]}" --json "$OUT/nanogpt_owtgpt.json"
    }
    export -f nano
    export PY WORK DRY CARRY REPO OUT
    stage nanogpt 150 bash -c nano
    rc=$?
    fig=$("$PY" - "$OUT" "$DRY" 2>/dev/null <<'EOF'
import json, re, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
ms = float(re.findall(r"time per iteration: ([0-9.]+)ms", open(f"{out}/nanogpt_bench.txt").read())[-1])
nano = (2 * 32 if dry else 12 * 1024) / (ms / 1000)
ours = json.load(open(f"{out}/nanogpt_owtgpt.json"))["compile"]["tokens_per_s"]
print(f"nanoGPT bench.py {nano:,.0f} tok/s, owtgpt {ours:,.0f} tok/s: owtgpt/nanoGPT {ours / nano:.2f}x"
      + (" (dry run: different models)" if dry else ""))
EOF
)
    record nanogpt "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 2. the gpu-marked tests
if want gputests; then
    stage gputests 105 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests
    rc=$?
    [ "$rc" = 5 ] && rc=0  # none collected is not a failure of the script
    fig=$(grep -E "passed|failed|skipped|error" "$LOG" | tail -1)
    record gputests "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 3. trainer speed, gpt2 124M
if [ "$DRY" = 1 ]; then
    targs=(--device cpu --preset tiny --steps 3 --micro-batch 2 --seq-len 32 --precision fp32
           --train-tokens 50000 --total-batch-tokens 128)
else
    targs=(--steps 8)
fi
if want train; then
    stage train 140 "$PY" bench/train_gpu.py "${targs[@]}" --json "$OUT/train.json"
    rc=$?
    fig=$("$PY" -c "
import json; r = json.load(open('$OUT/train.json'))
c, e = r['compile'], r.get('eager')
s = f\"compile {c['tokens_per_s']:,.0f} tok/s MFU {100 * (c['mfu'] or 0):.1f}% peak {c['peak_mem_gib'] or 0:.1f} GiB\"
if e: s += f\"; eager {e['tokens_per_s']:,.0f} tok/s peak {e['peak_mem_gib'] or 0:.1f} GiB; ratio {r['ratio_compile_over_eager']:.2f}x\"
print(s)" 2>/dev/null)
    record train "$(verdict $rc)" "${fig:-?}" "$STAGE_S"

    # micro batch 64, compile: out of memory is a result, not a crash of this script
    mb64=64
    [ "$DRY" = 1 ] && mb64=4  # the dry run's total batch is 128 tokens of T=32
    stage train_mb64 80 "$PY" bench/train_gpu.py "${targs[@]}" --micro-batch "$mb64" --no-baseline \
        --json "$OUT/train_mb64.json"
    rc=$?
    if [ "$rc" != 0 ] && tail -50 "$LOG" | grep -q "OutOfMemory\|out of memory"; then
        record train_mb64 "out of memory" "micro batch 64 does not fit" "$STAGE_S"
    else
        fig=$("$PY" -c "
import json; c = json.load(open('$OUT/train_mb64.json'))['compile']
print(f\"compile {c['tokens_per_s']:,.0f} tok/s MFU {100 * (c['mfu'] or 0):.1f}% peak {c['peak_mem_gib'] or 0:.1f} GiB\")" 2>/dev/null)
        record train_mb64 "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
    fi
fi

# ------------------------------------------------------------------ 3b. (opt-in) flash attention vs auto
if want sdpa; then
    stage sdpa 80 "$PY" bench/train_gpu.py "${targs[@]}" --no-baseline --sdpa-backend flash --json "$OUT/sdpa_flash.json"
    rc=$?
    fig=$("$PY" -c "
import json
f = json.load(open('$OUT/sdpa_flash.json'))['compile']
a = json.load(open('$OUT/train.json'))
s = f\"flash {f['tokens_per_s']:,.0f} tok/s peak {f['peak_mem_gib'] or 0:.1f} GiB\"
s += f\"; {a['compile'].get('sdpa_backend', 'auto')} {a['compile']['tokens_per_s']:,.0f} tok/s: auto/flash {a['compile']['tokens_per_s'] / f['tokens_per_s']:.3f}x\"
print(s)" 2>/dev/null)
    record sdpa "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 3c. (opt-in) small cards, issue 20
if want smallgpu; then
    if [ "$DRY" = 1 ]; then
        sgargs=(--device cpu --steps 3)
    else
        sgargs=(--device cuda --caps 8,4 --steps 8)
    fi
    stage smallgpu 300 "$PY" bench/smallgpu.py "${sgargs[@]}" --json "$OUT/smallgpu.json"
    rc=$?
    fig=$("$PY" -c "
import json; r = json.load(open('$OUT/smallgpu.json'))
parts = []
for x in r['results']:
    lab = 'uncapped' if x['cap_gib'] is None else f\"{x['cap_gib']:g} GiB\"
    if 'error' in x:
        parts.append(f\"{lab}: {x['error'][:80]}\"); continue
    s = f\"{lab}: mb {x['micro_batch']}{' +ckpt' if x['activation_checkpointing'] else ''} {x['tokens_per_s']:,.0f} tok/s\"
    s += f\" ({x.get('tokens_per_s_vs_uncapped', 1):.2f}x), probe {x['probe_seconds']}s\"
    if x.get('plan_error') is not None:
        s += f\", plan {100 * x['plan_error']:+.0f}%\"
    parts.append(s)
print('; '.join(parts))" 2>/dev/null)
    record smallgpu "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 4. data wait per step
if want sampler; then
    if [ "$DRY" = 1 ]; then
        sargs=(--device cpu --rounds 1 --batches 3 --tokens 2000000 --shards 2)
    else
        sargs=(--device cuda --steps 30 --warmup 5 --tokens 20000000)
    fi
    stage sampler 40 "$PY" bench/sampler.py --source "" "${sargs[@]}" --json "$OUT/sampler.json"
    rc=$?
    fig=$("$PY" -c "
import json; r = json.load(open('$OUT/sampler.json'))
if r['mode'] == 'cpu':
    print(f\"cpu smoke: sampler/loop {r['sampler_over_loop']:.1f}x\"); raise SystemExit
parts = []
try:
    t = json.load(open('$OUT/train.json'))
    accum = 2**19 // (32 * 1024)  # micro-steps per gpt2 optimizer step in stage 3
    train_step_ms = t['compile']['step_ms']
except Exception:
    accum, train_step_ms = None, None
for k, v in r['results'].items():
    s = f\"{k}: wait {v['wait_ms']:.3f} ms ({v['wait_pct']:.2f}% of its step)\"
    if train_step_ms:
        s += f\", {100 * v['wait_ms'] * accum / train_step_ms:.2f}% of the stage-3 step\"
    parts.append(s)
print('; '.join(parts))" 2>/dev/null)
    record sampler "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 5. generation, KV cache vs none
if want generate; then
    if [ "$DRY" = 1 ]; then
        gargs=(--device cpu --preset tiny --new-tokens 8)
    else
        gargs=(--device cuda --new-tokens 256)
    fi
    stage generate 30 "$PY" bench/generate.py "${gargs[@]}" --json "$OUT/generate.json"
    rc=$?
    fig=$("$PY" -c "
import json; r = json.load(open('$OUT/generate.json'))
s = f\"cached {r['cached_tok_s']:,.1f} tok/s vs uncached {r['uncached_tok_s']:,.1f}: {r['ratio']:.2f}x\"
if r.get('graph_tok_s'):
    s += f\"; CUDA graph {r['graph_decode_tok_s']:,.1f} tok/s decode ({r['graph_over_cached']:.2f}x cached)\"
print(s + f\", same tokens: {r['same_tokens']}\")" 2>/dev/null)
    record generate "$(verdict $rc)" "${fig:-?}" "$STAGE_S"
fi

# ------------------------------------------------------------------ 6. torchrun (NCCL), checkpoint, resume
if want ddp; then
    dev=cuda
    [ "$DRY" = 1 ] && dev=cpu
    ddp() {
        set -e
        "$PY" -c "
import sys; sys.path.insert(0, 'bench')
from pathlib import Path
from train_gpu import write_synthetic_shards
write_synthetic_shards(Path('$WORK/ddp-shards'), 2_000_000, 200_000)"
        common=(--data "$WORK/ddp-shards" --out "$WORK/ddp-run" --preset tiny --device "$dev" --seq-len 128
                --micro-batch 8 --total-batch-tokens 2048 --eval-every 2 --eval-windows 8 --sample-every 0
                --ckpt-every 2 --no-compile --no-tensorboard --no-progress --log-every 1)
        "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m trainer "${common[@]}" --max-steps 2
        test -f "$WORK/ddp-run/checkpoints/step-00000002.pt"
        "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m trainer "${common[@]}" --max-steps 4 --resume
        test -f "$WORK/ddp-run/checkpoints/step-00000004.pt"
        "$PY" -c "import json; print([json.loads(l).get('step') for l in open('$WORK/ddp-run/metrics.jsonl')][-3:])"
    }
    export -f ddp
    export PY WORK dev
    stage ddp 60 bash -c ddp
    rc=$?
    if [ "$rc" = 0 ]; then fig="torchrun x1 ($dev): 2 steps, checkpoint step 2, --resume to step 4"; else fig="see log"; fi
    record ddp "$(verdict $rc)" "$fig" "$STAGE_S"
fi

# ------------------------------------------------------------------ the table, printed last
"$PY" - "$SUMMARY" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
w = max([len(r["stage"]) for r in rows] + [5])
v = max([len(r["result"]) for r in rows] + [6])
print()
print(f"{'stage':<{w}} | {'result':<{v}} | figure")
print(f"{'-' * w}-+-{'-' * v}-+-{'-' * 40}")
for r in rows:
    print(f"{r['stage']:<{w}} | {r['result']:<{v}} | {r['figure']} ({r['seconds']:.0f}s)")
EOF
if grep -q '"result": "\(failed\|timeout\)' "$SUMMARY"; then exit 1; fi
exit 0
