#!/usr/bin/env bash
# Word–referent on objects and voices the training never had (issue 14's generality check).
#
# Trains OBS and the one-pass dual encoder (the suite's recipe, novel names: each
# recording names its objects with its own words) on recordings of 24 of the 48
# classes (circles and squares) said by the generator's 16 usual voices, then scores
# them on two held-out sets of 6 recordings:
#   familiar: the same 24 classes and voices (other recordings);
#   unseen:   the other 24 classes (triangles and stars, never seen in training) said
#             by 8 espeak-ng voices none of the training recordings used.
# The suite scores the unseen set (OUT/result.json, with the command it ran);
# scripts/diagnose_word_referent.py scores the same OBS model on both sets.
#
# Usage: scripts/word_referent_unseen.sh OUT [RECORDINGS]   (default 64 training recordings)
# Cost on 2 cores: ~10 min to generate and pack, ~16 min to train OBS, ~10 min the dual.
set -euo pipefail
OUT=${1:?usage: scripts/word_referent_unseen.sh OUT [RECORDINGS]}
RECORDINGS=${2:-64}
OBS=${OBS:-obs}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
UNSEEN_VOICES=en-us+m1,en-029+f1,en-us-nyc+f4,en-gb-scotland+m4,en+Michael,en-gb-x-rp+m6,en-us+steph,en-gb-x-gbcwmd+f2
common=(--seconds 300 --names recording --objects-per-recording 8 --classes 24 --overwrite --json)
mkdir -p "$OUT"

generate() {  # NAME SEED COUNT [extra make-recordings flags]
  local name=$1 seed=$2 count=$3; shift 3
  if [ ! -f "$OUT/${name}_shards.json" ]; then
    "$OBS" make-recordings --out "$OUT/${name}_rec" --recordings "$count" --seed "$seed" \
      "${common[@]}" "$@" > "$OUT/${name}_rec.json"
    "$OBS" make-shards --from "$OUT/${name}_rec" --out "$OUT/${name}_shards" --overwrite \
      --json > "$OUT/${name}_shards.json"
  fi
}
generate train 0 "$RECORDINGS"
generate familiar 1000 6
generate unseen 1000 6 --first-class 24 --voices "$UNSEEN_VOICES"

"$OBS" eval --task word-referent --config configs/eval_word_referent.toml \
  --set "settings=['recording']" --set "models=['obs','dual']" \
  --set recordings="$RECORDINGS" --set heldout_recordings=6 \
  --set train_source="$OUT/train_shards" --set heldout_source="$OUT/unseen_shards" \
  --set rehearsal_ratio=15 --set work_dir="$OUT/suite" --out "$OUT/result.json"

for set in familiar unseen; do
  echo "== OBS on the $set held-out recordings"
  "$PY" scripts/diagnose_word_referent.py "$OUT/suite" recording "$OUT/${set}_shards" \
    | tee "$OUT/diagnose_${set}.txt"
done
