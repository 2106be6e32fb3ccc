#!/usr/bin/env bash
# Runs `llama bench` and benches/pytorch_reference.py side by side on one GPU and appends one JSON
# line per run to $OUT_DIR/results.jsonl (docs/performance.md reads its tables from there).
#
#   LLAMA=path/to/llama OUT_DIR=out benches/gpu_compare.sh JOB...
#
# A JOB is `IMPL:PRESET:MODE:BATCH` with IMPL one of
#   pt-eager, pt-compile          PyTorch (python3 on the PATH), autocast bf16
#   cuda, tch-cuda, wgpu          `llama bench --device IMPL` (bf16; wgpu runs f32: Vulkan has no bf16 math)
# e.g. `pt-eager:125m:train:8 cuda:125m:train:8 pt-eager:125m:decode:1`.
# Environment: SEQ (default 2048; decode uses it as the prompt length), DTYPE (bf16), WARMUP (3),
# ITERS (10), PEAK (989e12: H100/H200 dense bf16), PEAK_BW (bytes/s: `llama bench`'s decode jobs
# then report MBU, e.g. 4.8e12 for an H200), JOB_TIMEOUT (seconds, 900), SMI_MS (the card's
# memory is sampled with nvidia-smi every SMI_MS milliseconds, default 1000; 0 turns it off).
# Every job runs under `timeout` so that one slow start cannot eat the rest; a job that fails or
# times out is recorded as {"job": ..., "error": ...} instead of a result.
set -u
: "${LLAMA:?set LLAMA to the llama binary}" "${OUT_DIR:?set OUT_DIR}"
SEQ=${SEQ:-2048} DTYPE=${DTYPE:-bf16} WARMUP=${WARMUP:-3} ITERS=${ITERS:-10} PEAK=${PEAK:-989e12}
JOB_TIMEOUT=${JOB_TIMEOUT:-900} SMI_MS=${SMI_MS:-1000}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT_DIR"
for job in "$@"; do
    IFS=: read -r impl preset mode batch <<<"$job"
    json="$OUT_DIR/$preset.json"
    [ -f "$json" ] || "$LLAMA" params --preset "$preset" --model-json >"$json"
    dtype=$DTYPE
    [ "$impl" = wgpu ] && dtype=f32
    case $impl in
        pt-eager | pt-compile)
            cmd=(python3 "$here/pytorch_reference.py" --model-json "$json" --device cuda)
            [ "$impl" = pt-compile ] && cmd+=(--compile) ;;
        *) cmd=("$LLAMA" --device "$impl" bench --preset "$preset" --json)
            [ "$mode" = decode ] && [ -n "${PEAK_BW:-}" ] && cmd+=(--peak-bandwidth "$PEAK_BW") ;;
    esac
    cmd+=(--mode "$mode" --batch "$batch" --seq "$SEQ" --dtype "$dtype" --warmup "$WARMUP"
        --iters "$ITERS" --peak-flops "$PEAK")
    echo "== $job: ${cmd[*]}" >&2
    start=$(date +%s)
    # Peak memory the card reports while the job runs (the same measure for every implementation:
    # CUDA context and allocator pools included).
    smi_log="$OUT_DIR/.smi"
    : >"$smi_log"
    smi=
    if [ "$SMI_MS" -gt 0 ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms "$SMI_MS" >"$smi_log" 2>/dev/null &
        smi=$!
    fi
    if line=$(timeout "$JOB_TIMEOUT" "${cmd[@]}" 2>"$OUT_DIR/$impl-$preset-$mode-$batch.err" | tail -n 1) &&
        [ "${line:0:1}" = "{" ]; then
        [ -n "$smi" ] && kill $smi 2>/dev/null
        mib=$(sort -n "$smi_log" | tail -n 1)
        echo "{\"job\":\"$job\",\"wall_s\":$(($(date +%s) - start)),\"gpu_mem_peak_mib\":${mib:-null},\"result\":$line}" >>"$OUT_DIR/results.jsonl"
        echo "$line" >&2
    else
        [ -n "$smi" ] && kill $smi 2>/dev/null
        err=$(tail -n 1 "$OUT_DIR/$impl-$preset-$mode-$batch.err" | tr -d '"\\' | cut -c1-300)
        echo "{\"job\":\"$job\",\"wall_s\":$(($(date +%s) - start)),\"error\":\"$err\"}" >>"$OUT_DIR/results.jsonl"
        echo "FAILED after $(($(date +%s) - start)) s: $err" >&2
    fi
done
