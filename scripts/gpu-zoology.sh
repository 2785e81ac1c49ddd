#!/usr/bin/env bash
# The Zoology MQAR reference point on a GPU (issue 19): run by a session that is
# lent a GPU machine.
#
#   bash scripts/gpu-zoology.sh        # from the repository root
#
# configs/eval_mqar_zoology.toml (vocabulary 8,192, 4 pairs at length 64, two
# layers: short convolution then the mixer, 100k training sequences = 1,563
# steps of 64) for attention and DeltaNet (chunked), d_model 64 and 128, lr
# {1e-3, 3e-3, 1e-2, 3e-2}, with train.device=cuda.
#
# Stage A (the protocol): the 16 runs as 8 processes at once (model x width x
# two lrs each; one CPU thread each: a step is mostly Python and the MQAR batch
# generator, so processes, not the GPU, are the limit), merged into
# mqar_zoology.json with the best lr per model and width. A wall-time cap of half
# the time left per run (`seconds`, never reached on an H200) keeps a slow
# machine from losing every run to the time limit: a capped run says so
# (`stopped`, fewer `steps`).
# Stage B (only if time is left): longer training than the protocol's one pass
# (Zoology trains 64 epochs over its 100k sequences): per model and width the
# two best lrs of stage A, fresh sequences, until the held-out probe reaches
# 0.99 or the time left runs out; merged into mqar_zoology_long.json.
#
# Files go to $OUT when set (the device tool's folder), else a temporary folder:
# machine.txt, gpu-zoology.log, mqar_zoology.json[, mqar_zoology_long.json].
# Environment: PYTHON (default python3), BUDGET (seconds for the whole script,
# default 400), LONG (0: skip stage B), WHEELS (0: do not install .whl/), DEVICE (default cuda), ARGS (more --set
# options for every run: a local smoke test is
# `WHEELS=0 DEVICE=cpu PYTHON=.venv/bin/python ARGS="--set train_examples=128 --set eval_batches=1" BUDGET=200 LONG=0`).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-400}
LONG=${LONG:-1}
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA <<<"${ARGS:-}"
DEST=${OUT:-$(mktemp -d /tmp/gpu-zoology.XXXXXX)}
PARTS=$(mktemp -d /tmp/gpu-zoology-parts.XXXXXX)
CFG=configs/eval_mqar_zoology.toml
LOG=$DEST/gpu-zoology.log
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
say() { echo "=== $* (t=$((SECONDS - start)) s)" | tee -a "$LOG"; }

say "wheels"
if [ "${WHEELS:-1}" != 0 ] && [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

say "machine"
{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1 | tee "$DEST/machine.txt"

# run_parts STAGE TIMEOUT ARGS...: one eval process per "model width lrs" line on stdin.
run_parts() {
    local stage=$1 limit=$2; shift 2
    local pids=() model width lrs tag
    while read -r model width lrs; do
        tag=${stage}_${model}_${width}_${lrs//[^0-9a-z]/}
        timeout "$limit" "$PY" -m launch.cli eval --task mqar-sweep --config "$CFG" \
            --set "models=[\"$model\"]" --set "widths=[$width]" --set "lrs=$lrs" \
            --set "train.device=$DEVICE" "${EXTRA[@]}" "$@" --out "$PARTS/$tag.json" >"$PARTS/$tag.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || echo "a $stage process exited $?" | tee -a "$LOG"; done
    for f in "$PARTS/${stage}"_*.log; do echo "--- $(basename "$f")"; cat "$f"; done >>"$LOG"
}

# merge STAGE OUTFILE COMMAND: one suite result of the stage's parts, best lr recomputed.
merge() {
    "$PY" - "$PARTS" "$1" "$2" "$3" "$DEVICE" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
import torch
from launch.evals import write_result
from launch.evals.mqar_sweep import best_rows
parts, stage, out, command = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
want = sys.argv[5]
files = sorted(parts.glob(f"{stage}_*.json"))
if not files:
    sys.exit(f"{stage}: no part finished")
loaded = [json.loads(f.read_text()) for f in files]
device = (f"{want} ({torch.cuda.get_device_name(0)})" if want.startswith("cuda")
          and torch.cuda.is_available() else want)
rows = [{**r, "device": device} for part in loaded for r in part["results"]]
result = {**loaded[0], "results": rows, "best": best_rows(rows), "command": command,
          "parts": [p["command"] for p in loaded],
          "wall_seconds": max(p["wall_seconds"] for p in loaded)}
write_result(result, out)
for r in sorted(result["best"], key=lambda r: (r["model"], r["d_model"])):
    print(f"{stage} best: {r['model']} d_model {r['d_model']} lr {r['lr']} accuracy "
          f"{r['accuracy']:.4f} steps {r['steps']} examples {r['examples']} {r['seconds']} s")
for r in rows:
    print(f"{stage} run: {r['model']} d {r['d_model']} lr {r['lr']} acc {r['accuracy']:.4f} "
          f"train {r['train_accuracy']:.4f} steps {r['steps']} {r['seconds']} s")
EOF
}

say "stage A: the protocol, 16 runs in 8 processes"
capA=$((($(left) - 60) / 2))
printf '%s\n' "attention 64 [1e-3,3e-3]" "attention 64 [1e-2,3e-2]" \
    "attention 128 [1e-3,3e-3]" "attention 128 [1e-2,3e-2]" \
    "deltanet 64 [1e-3,3e-3]" "deltanet 64 [1e-2,3e-2]" \
    "deltanet 128 [1e-3,3e-3]" "deltanet 128 [1e-2,3e-2]" \
    | run_parts A $(($(left) - 30)) --set "seconds=$capA"
merge A "$DEST/mqar_zoology.json" \
    "bash scripts/gpu-zoology.sh  # stage A: obs eval --task mqar-sweep --config $CFG --set train.device=$DEVICE --set seconds=$capA (a cap) ${ARGS:-}, one process per model, width and lr pair"

secs=$(($(left) - 75))
if [ "$LONG" != 0 ] && [ "$secs" -ge 60 ] && [ -s "$DEST/mqar_zoology.json" ]; then
    say "stage B: longer training, ${secs} s per run"
    "$PY" - "$DEST/mqar_zoology.json" <<'EOF' >"$PARTS/b.txt"
import json, sys
rows = json.loads(open(sys.argv[1]).read())["results"]
for model in ("attention", "deltanet"):
    for width in (64, 128):
        at = [r for r in rows if r["model"] == model and r["d_model"] == width]
        at.sort(key=lambda r: (-r["accuracy"], -r["train_accuracy"], r["lr"]))
        for r in at[:2]:
            print(model, width, f"[{r['lr']}]")
EOF
    run_parts B $((secs + 60)) <"$PARTS/b.txt" --set train_examples=6400000 \
        --set "seconds=$secs" --set train.target_accuracy=0.99 --set train.eval_every=100
    merge B "$DEST/mqar_zoology_long.json" \
        "bash scripts/gpu-zoology.sh  # stage B: as stage A at each model and width's two best lrs, --set train_examples=6400000 --set seconds=$secs --set train.target_accuracy=0.99 --set train.eval_every=100"
else
    say "stage B skipped (LONG=$LONG, ${secs} s left for it)"
fi

say "done; files in $DEST"
ls -l "$DEST" | tee -a "$LOG"
