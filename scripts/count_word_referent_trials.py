"""How many word–referent trials each ``trial_unit`` builds from held-out shards, and how clean.

For each shard source: trials, distinct texts and distinct queries per unit
(``line``, ``name``), and how many trials' query line holds the referent's own
label (meaningful where lines say class names: the suite's ``class`` setting,
or your own recordings whose ``objects.json`` labels are the words said).
Labels only; no model. Uses the suite's trial settings (candidates, occurrences,
purity, gap, seed).

Usage::

    python scripts/count_word_referent_trials.py HELDOUT_SHARDS [MORE_SHARDS ...]
"""

from __future__ import annotations

import sys

import torch

from launch.evals.word_referent import WordReferentConfig
from launch.evals.word_referent_data import collect, count_recordings, usable
from launch.evals.word_referent_trials import UNITS, build_trials
from launch.runner import resolve_config


def main() -> None:
    torch.set_num_threads(1)
    cfg = WordReferentConfig()
    run_cfg = resolve_config(cfg.config, [])
    print("source unit trials texts queries referent-named")
    for source in sys.argv[1:]:
        labels, media = collect(run_cfg, source, count_recordings(run_cfg, source))
        line = {(c.recording, c.index): c.word for c in labels}
        for unit in UNITS:
            trials = usable(build_trials(labels, cfg.candidates, cfg.min_occurrences,
                                         cfg.min_purity, cfg.min_gap, cfg.trial_seed, unit),
                            media)
            named = sum(any(t.referent in line[(t.recording, i)] for i in t.heard)
                        for t in trials)
            print(source, unit, len(trials), len({(t.recording, t.text) for t in trials}),
                  len({(t.recording, t.query) for t in trials}), named, flush=True)


if __name__ == "__main__":
    main()
