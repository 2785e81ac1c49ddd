#!/usr/bin/env bash
# Word–referent on objects and voices the training never had (issue 14's generality check).
#
# Trains OBS, the one-pass dual encoder and the attention peer (the suite's recipe,
# novel names: each recording names its objects with its own words) on recordings of
# 24 of the 48 classes (circles and squares) said by the generator's 16 usual voices,
# then scores them on two held-out sets of 6 recordings:
#   familiar: the same 24 classes and voices (other recordings);
#   unseen:   the other 24 classes (triangles and stars, never seen in training) said
#             by 8 espeak-ng voices none of the training recordings used.
# The suite scores the unseen set (OUT/result_unseen.json, with the command it ran),
# then the same trained learners on the familiar set (OUT/result_familiar.json).
#
# Usage: scripts/word_referent_unseen.sh OUT [RECORDINGS]   (default 64 training recordings)
# Cost on 2 cores: ~10 min to generate and pack, ~20 min to train OBS, ~10 min each peer.
set -euo pipefail
OUT=${1:?usage: scripts/word_referent_unseen.sh OUT [RECORDINGS]}
RECORDINGS=${2:-64}
OBS=${OBS:-obs}
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

# Both held-out sets score the same learners: the second run loads them (reuse_trained).
for set in unseen familiar; do
  "$OBS" eval --task word-referent --config configs/eval_word_referent.toml \
    --set "settings=['recording']" --set "models=['obs','dual','attention']" \
    --set recordings="$RECORDINGS" --set heldout_recordings=6 \
    --set train_source="$OUT/train_shards" --set heldout_source="$OUT/${set}_shards" \
    --set rehearsal_ratio=15 --set work_dir="$OUT/suite" --set reuse_trained=true \
    --out "$OUT/result_${set}.json"
done
