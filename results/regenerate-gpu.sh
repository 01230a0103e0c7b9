#!/usr/bin/env bash
# Regenerate the GPU results under results/<gpu>/ on a CUDA machine, the most important first,
# inside a time budget.
#
#   results/regenerate-gpu.sh [BUDGET_S] [STEP ...]
#
# Steps, in this default order: realtime tests peers layout profile overhead eval fused lecture non-realtime
#   realtime      bench run --suite realtime (params, FLOPs, eager/graph/graph-fp32, batch sweep)
#   tests         pytest -m gpu (CUDA modes, CUDA-graph capture of every model, GPU evaluation);
#                 its summary goes to results/<gpu>/gpu-tests.txt
#   peers         bench peers (ours against HF / torchvision / smp, same process and mode; SegFormer-B5
#                 at 1024x2048, then B0 and DeepLab v3 at 512x512, then the rest)
#   layout        PSPNet-MobileNetV2 at 1024x2048 and DeepLab v3 R101 at 512x512 profiled in mode graph
#                 with the layout held to channels_last and to NCHW: where the time goes in each (on the
#                 first H200 run, protocol v1, channels_last made graph up to 2.8x slower than
#                 graph-fp32 on these CNNs; from v2 every graph record times both layouts and keeps
#                 the faster, so the suite itself says which layout won)
#   profile       bench profile: time per operator of SegFormer-B5 at 1024x2048 (ours in graph, with
#                 its fused kernels and without, and in graph-fused; HF's in graph) and of DeepLab v3
#                 R101 at 512x512 (ours and torchvision's)
#   overhead      bench overhead (the harness against a bare CUDA-event loop)
#   eval          the evaluation throughput benchmark of segformer-b0 on a generated ADE20K set of
#                 $EVAL_IMAGES (2000) images, generated in the background while the first steps run
#   fused         bench run --suite realtime --modes graph-fused,eager-fused (the inference forms)
#   lecture       bench run --suite lecture
#   non-realtime  bench run --suite non-realtime
# Every step resumes: records this GPU took already (records.jsonl) and rows already in peers.csv are skipped,
# so what a short budget leaves undone the next call continues. A step gets its own cap or what
# is left of the budget, whichever is less, and is stopped there (what it measured is kept); the
# tables and plots are rebuilt at the end.
#
# Environment:
#   BUDGET_S          the budget when not given as the first argument (default 3600)
#   PYTHON            the interpreter (default python3)
#   WHEELS            a folder of wheels installed with --no-index when fvcore is missing (default .whl)
#   SEGBENCH_OUT      also write $SEGBENCH_OUT/gpu-results.tgz (the device folder) and log.txt
#   SEGBENCH_GIT_COMMIT  the commit of a copy without .git, recorded in every record
#   DEVICE            cuda (default), cuda:N, or cpu to rehearse the script on a machine without a GPU
#   RESULTS           the results folder (default results, the reference results; RESULTS=runs for a rehearsal)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
START=$(date +%s)
BUDGET=${BUDGET_S:-3600}
if [[ ${1:-} =~ ^[0-9]+$ ]]; then BUDGET=$1; shift; fi
STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(realtime tests peers layout profile overhead eval fused lecture non-realtime)
PYTHON=${PYTHON:-python3}
RESERVE=40  # seconds kept for the tables, plots and archive
LOG=${SEGBENCH_OUT:+$SEGBENCH_OUT/log.txt}
LOG=${LOG:-/dev/null}
EVAL_IMAGES=${EVAL_IMAGES:-2000}
ADE=${TMPDIR:-/tmp}/segbench-ade20k-$EVAL_IMAGES

say() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOG" >&2; }

if ! "$PYTHON" -c "import fvcore" 2>/dev/null; then
    WHEELS=${WHEELS:-.whl}
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        say "installing the wheels of $WHEELS into ${TMPDIR:-/tmp}/segbench-site"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "${TMPDIR:-/tmp}/segbench-site" "$WHEELS"/*.whl || exit 2
        export PYTHONPATH="${TMPDIR:-/tmp}/segbench-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The reference results: every command but `bench data` reads and writes $RESULTS (the commands' own default
# is runs/, where a user's measurements go)
RESULTS=${RESULTS:-results}
bench() {
    if [[ $1 == data ]]; then "$PYTHON" -m bench "$@"; else "$PYTHON" -m bench "$@" --results "$RESULTS"; fi
}

DEVICE=${DEVICE:-cuda}
if ! SLUG=$("$PYTHON" -c "
import sys, torch
if '$DEVICE' != 'cpu' and not torch.cuda.is_available():
    sys.exit('no CUDA GPU visible: this script regenerates GPU results (DEVICE=cpu rehearses it on the CPU)')
from bench.provenance import device_slug
print(device_slug('$DEVICE'))"); then
    exit 2
fi
FOLDER=$RESULTS/$SLUG
mkdir -p "$FOLDER"
say "device folder $FOLDER; budget ${BUDGET} s; steps ${STEPS[*]}"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
        2>&1 | tee -a "$LOG" >&2
fi

left() { echo $((BUDGET - RESERVE - ($(date +%s) - START))); }

# step NAME CAP COMMAND...: run COMMAND for at most min(CAP, what is left), logging its output
step() {
    local name=$1 cap=$2 limit rc
    shift 2
    limit=$(left)
    ((limit < cap)) || limit=$cap
    if ((limit < 20)); then
        say "$name: skipped, the budget is spent"
        return 0
    fi
    say "$name: up to ${limit} s: $*"
    timeout --kill-after=20 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) say "$name: done" ;;
        124 | 137) say "$name: stopped at its ${limit} s limit (what it measured is kept; run again to continue)" ;;
        *) say "$name: exit $rc" ;;
    esac
}

for s in "${STEPS[@]}"; do
    if [[ $s == eval && ! -f $ADE.done ]]; then  # generate while the GPU works on the earlier steps
        rm -rf "$ADE"
        # its own stdio: a caller that reads the script's output to its end does not wait for it
        ( bench data synth --dataset ade20k --out "$ADE" --num "$EVAL_IMAGES" && touch "$ADE.done" ) \
            </dev/null >"$ADE.log" 2>&1 &
        SYNTH=$!
    fi
done

run_tests() {
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests 2>&1 | tee "$FOLDER/gpu-tests.log"
    local rc=${PIPESTATUS[0]}
    { echo "pytest -m gpu: exit $rc"; tail -n 25 "$FOLDER/gpu-tests.log"; } >"$FOLDER/gpu-tests.txt"
    rm -f "$FOLDER/gpu-tests.log"
    return "$rc"
}

run_peers() {  # the rows the targets name first (a cut step keeps them), then every pair and size
    local rc=0
    bench peers --device "$DEVICE" --arch segformer-b5 --sizes 1024x2048 || rc=$?
    bench peers --device "$DEVICE" --arch segformer-b0,deeplabv3-r101-os8 --sizes 512x512 || rc=$?
    bench peers --device "$DEVICE" || rc=$?
    return "$rc"
}

run_profiles() {
    local rc=0 mode
    [[ $DEVICE == cpu ]] && mode=eager || mode=graph
    bench profile segformer-b5 --dataset cityscapes --mode "$mode" --device "$DEVICE" --top 30 >/dev/null || rc=$?
    # the same step with SegFormer's fused kernels off (written beside, as ...-kernels-off.md)
    SEGBENCH_KERNELS=0 bench profile segformer-b5 --dataset cityscapes --mode "$mode" --device "$DEVICE" --top 30 >/dev/null || rc=$?
    bench profile segformer-b5 --dataset cityscapes --mode "$mode-fused" --device "$DEVICE" --top 30 >/dev/null || rc=$?
    bench profile segformer-b5 --dataset cityscapes --mode "$mode" --peer --device "$DEVICE" --top 30 >/dev/null || rc=$?
    bench profile deeplabv3-r101-os8 --mode "$mode" --device "$DEVICE" --top 30 >/dev/null || rc=$?
    bench profile deeplabv3-r101-os8 --mode "$mode" --peer --device "$DEVICE" --top 30 >/dev/null || rc=$?
    return "$rc"
}

run_layout() {  # where the time goes under fp16 graph replay in each memory layout
    local rc=0 layout mode
    [[ $DEVICE == cpu ]] && mode=eager || mode=graph
    for layout in channels_last contiguous; do
        bench profile pspnet-mobilenetv2 --dataset cityscapes --mode "$mode" --layout "$layout" --device "$DEVICE" \
            --top 30 >/dev/null || rc=$?
        bench profile deeplabv3-r101-os8 --mode "$mode" --layout "$layout" --device "$DEVICE" --top 30 >/dev/null || rc=$?
    done
    return "$rc"
}

run_eval() {
    while [[ -n ${SYNTH:-} ]] && kill -0 "$SYNTH" 2>/dev/null; do sleep 1; done  # not this shell's child
    [[ -f $ADE.done ]] || { cat "$ADE.log"; return 1; }
    bench eval segformer-b0 --dataset ade20k --data-root "$ADE/ADEChallengeData2016" --weights none --benchmark \
        --no-progress --device "$DEVICE"
}

export -f bench run_tests run_peers run_layout run_profiles run_eval
export PYTHON RESULTS FOLDER ADE SYNTH DEVICE
for s in "${STEPS[@]}"; do
    case $s in
        tests) step tests 300 run_tests ;;
        realtime | lecture | non-realtime)
            cap=600; [[ $s == realtime ]] || cap=1800
            step "$s" "$cap" bench run --suite "$s" --no-report --device "$DEVICE" ;;
        peers) step peers 600 run_peers ;;
        layout) step layout 120 run_layout ;;
        profile) step profile 240 run_profiles ;;
        overhead) step overhead 180 bench overhead --device "$DEVICE" ;;
        eval) step eval 300 run_eval ;;
        fused) step fused 300 bench run --suite realtime --modes graph-fused,eager-fused --no-report --device "$DEVICE" ;;
        *) say "unknown step $s (choose from realtime tests peers layout profile overhead eval fused lecture non-realtime)"; exit 2 ;;
    esac
done

if [[ -n ${SYNTH:-} ]] && kill -0 "$SYNTH" 2>/dev/null; then  # the budget ended before the eval step
    pkill -P "$SYNTH" 2>/dev/null; kill "$SYNTH" 2>/dev/null
fi
if [[ -f $FOLDER/gpu-tests.log ]]; then  # the tests step was stopped at its limit before its summary
    { echo "pytest -m gpu: stopped at its time limit"; tail -n 25 "$FOLDER/gpu-tests.log"; } >"$FOLDER/gpu-tests.txt"
    rm -f "$FOLDER/gpu-tests.log"
fi
say "tables and plots of $FOLDER"
bench table --device "$SLUG" >/dev/null 2>>"$LOG" && bench plot --device "$SLUG" 2>&1 | tail -n 3 | tee -a "$LOG"
if [[ -n ${SEGBENCH_OUT:-} ]]; then
    tar czf "$SEGBENCH_OUT/gpu-results.tgz" --exclude='*.lock' -C "$RESULTS" "$SLUG" && say "wrote $SEGBENCH_OUT/gpu-results.tgz"
fi
say "finished"
