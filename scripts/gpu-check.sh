#!/usr/bin/env bash
# The GPU check (issue 17): run at once by a session that is lent a GPU machine.
#
#   bash scripts/gpu-check.sh        # from the repository root
#
# 1. installs the wheels carried in .whl/ (packages the machine's image lacks:
#    av, soundfile, cffi, pycparser, braceexpand, submitit), if that folder is here;
# 2. prints nvidia-smi and python3's torch/CUDA versions;
# 3. runs the CUDA tests (tests/test_cuda_step.py: a training window on CUDA
#    equals the same window on the CPU);
# 4. runs `obs bench step --device cuda --json` at N = 1024 ... 65536, one
#    process per N (one JSON line each in bench_step_cuda.jsonl).
#
# Every log and JSON goes to $OUT when it is set (the device tool's output
# folder), else to a fresh temporary folder. Runs in about 2-3 minutes on an
# H200; each stage has its own time limit so the whole stays under 6 minutes.
# Without a GPU (no nvidia-smi) it stops after stage 2 with exit code 0.
# Environment: PYTHON (default python3), NODES (the N list), WINDOWS (timed windows).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NODES=${NODES:-1024 4096 16384 32768 65536}
WINDOWS=${WINDOWS:-5}
DEST=${OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1
start=$SECONDS
stage() { echo; echo "=== $* (t=$((SECONDS - start)) s)"; }
status=0

stage "1. wheels"
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
    echo "installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    echo "no .whl/ folder: using the interpreter's packages"
fi

stage "2. machine"
{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    "$PY" - <<'EOF'
import sys
import torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
import launch.runner, launch.bench.step  # noqa: E401,F401  (every import the bench needs)
print("imports ok")
EOF
} 2>&1 | tee "$DEST/machine.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu-check: the interpreter cannot import the project"; exit 1; }
if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: no GPU on this machine (no nvidia-smi): skipping the CUDA tests and bench"
    exit 0
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: nvidia-smi is here but torch sees no CUDA device"
    exit 1
fi

stage "3. CUDA tests"
# --noconftest: tests/conftest.py registers the S3 and SLURM fixtures (moto, boto3),
# which the CUDA tests do not use and the machine's image lacks.
timeout 240 "$PY" -m pytest -p no:cacheprovider --noconftest -v tests/test_cuda_step.py \
    2>&1 | tee "$DEST/pytest_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu-check: CUDA tests FAILED"; status=1; }

stage "4. obs bench step --device cuda"
: > "$DEST/bench_step_cuda.jsonl"
for n in $NODES; do
    echo "--- N = $n (t=$((SECONDS - start)) s)"
    if timeout 150 "$PY" -m launch.cli bench step --device cuda --nodes "$n" \
            --windows "$WINDOWS" --json >>"$DEST/bench_step_cuda.jsonl" \
            2>>"$DEST/bench_step_cuda.log"; then
        tail -n 1 "$DEST/bench_step_cuda.jsonl"
    else
        echo "gpu-check: bench step at N = $n FAILED (stderr in bench_step_cuda.log)"
        tail -n 20 "$DEST/bench_step_cuda.log"
        status=1
    fi
done

stage "done: exit $status; files in $DEST"
ls -l "$DEST"
exit $status
