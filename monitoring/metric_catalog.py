"""The catalogue of metrics the trainer emits and the Prometheus names they get.

The trainer hands the metrics sink a flat ``dict[str, float]`` (see
``docs/monitoring.md``). This module is the single place that says how each of
those keys becomes a Prometheus series: its exported name (always ``obs_``
prefixed, base units, ``_total`` for counters), its type, its help text, and —
for keys of the form ``<family>.<value>`` such as ``data_errors_total.bad_json``
— the extra label that carries ``<value>``.

Keys the catalogue does not know are exported generically (see
:func:`resolve_key`) so that a new metric in the trainer shows up in Prometheus
without a change here; the exporter warns once per such key so typos are seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["gauge", "counter"]

PREFIX = "obs_"

# Labels every series carries; an extra label (kind, phase) comes on top.
BASE_LABELS: tuple[str, ...] = ("job", "rank", "node")

# A family key without its ``.<value>`` part still counts, under this label value.
UNSPECIFIED_LABEL_VALUE = "unspecified"


@dataclass(frozen=True)
class MetricSpec:
    """How one trainer key (or key family) is exported.

    Attributes:
        key: the trainer's key, or the family prefix before the dot.
        name: the exported Prometheus name; counters end in ``_total``.
        kind: ``"gauge"`` or ``"counter"`` (counters are set from the trainer's
            cumulative totals, never incremented here).
        help: the HELP text.
        label: for families, the name of the label that holds the suffix.
    """

    key: str
    name: str
    kind: MetricKind
    help: str
    label: str | None = None


def _g(key: str, name: str, help_text: str) -> MetricSpec:
    return MetricSpec(key, PREFIX + name, "gauge", help_text)


def _c(key: str, name: str, help_text: str, label: str | None = None) -> MetricSpec:
    return MetricSpec(key, PREFIX + name, "counter", help_text, label)


# Order is the order of the exposition and of the table in docs/monitoring.md.
CATALOG: tuple[MetricSpec, ...] = (
    _g("step", "step", "Last completed optimizer step."),
    _c("samples_total", "samples_total", "Samples (clips or sequences) trained on, cumulative."),
    _c("tokens_total", "tokens_total", "Time steps (tokens) trained on, cumulative."),
    _g("samples_per_s", "samples_per_second", "Training throughput in samples per second."),
    _g("tokens_per_s", "tokens_per_second", "Training throughput in time steps per second."),
    _g("loss", "loss", "Training loss of the last batch (mean over its scored positions)."),
    _g("accuracy", "accuracy", "Task accuracy of the last batch (0..1)."),
    _g("scored", "scored_positions", "Target positions scored in the last batch."),
    _g("eval_loss", "eval_loss", "Loss on the held-out evaluation batches."),
    _g("eval_accuracy", "eval_accuracy", "Accuracy on the held-out evaluation batches (0..1)."),
    _g("phase", "phase", "Scheduler phase of the current window (0 = parallel, 1 = sequential)."),
    _c("sync_bytes_total", "sync_bytes_total", "Bytes moved by state-delta synchronisation."),
    _c("sync_seconds_total", "sync_seconds_total", "Wall time spent in state-delta sync."),
    _c("sync_calls_total", "sync_calls_total", "State-delta synchronisations (one per commit)."),
    _c(
        "sync_dense_partitions_total",
        "sync_dense_partitions_total",
        "Partitions summed as a dense all-reduce (above the sparse/dense crossover).",
    ),
    _g("delta_nnz", "delta_nnz", "Non-zero entries in the last committed sparse delta."),
    _g("delta_density", "delta_density", "Density of the last committed delta (nnz / N^2)."),
    _g("write_conflict", "write_conflict", "Overlap of entries written by different streams."),
    _g("state_mean", "state_mean", "Mean of the big state's entries."),
    _g("state_std", "state_std", "Standard deviation of the big state's entries."),
    _g("state_kurtosis", "state_kurtosis", "Excess kurtosis of the big state's entries."),
    _c(
        "checksum_mismatches_total",
        "checksum_mismatches_total",
        "Replica checksum comparisons that found a differing partition.",
    ),
    _c("nonfinite_commits_total", "nonfinite_commits_total", "Commits refused as non-finite."),
    _c(
        "committed_entries_total",
        "committed_entries_total",
        "State entries changed by committed deltas, cumulative.",
    ),
    _c("data_errors_total", "data_errors_total", "Samples skipped as bad, by kind.", "kind"),
    _c(
        "data_unknown_labels_total",
        "data_unknown_labels_total",
        "Clips whose label is not in classes.json, by label kind (object).",
        "kind",
    ),
    _c(
        "data_store_retries_total",
        "data_store_retries_total",
        "Transient S3 failures of shard reads retried (an outage waited out).",
    ),
    _g("nonfinite_steps", "nonfinite_steps", "Consecutive steps with NaN/inf loss or weights."),
    _g(
        "data_clips_per_s",
        "data_clips_per_second",
        "Clips delivered by the data pipeline per second.",
    ),
    _g("ckpt_age_s", "checkpoint_age_seconds", "Seconds since the last complete checkpoint."),
    _g("ckpt_seconds", "checkpoint_duration_seconds", "Wall time of the last checkpoint write."),
    _g("ckpt_bytes", "checkpoint_bytes", "Bytes written by the last checkpoint."),
    _c("ckpt_failures_total", "checkpoint_failures_total", "Checkpoint writes that failed."),
    _c("ckpt_leftovers_removed_total", "checkpoint_leftovers_removed_total",
       "Temporary files of killed checkpoint writes deleted when the run took the store."),
    _c(
        "scheduler_decisions_total",
        "scheduler_decisions_total",
        "Windows the scheduler assigned to each phase.",
        "phase",
    ),
    _g("nodes_written", "nodes_written", "Nodes selected for writing in the last step."),
    # The writer's window statistics: named after what they are, and never with a
    # summary's _count suffix on a gauge (promtool refuses that).
    _g("mean_count", "writer_nodes_mean", "Writer's learned node count k-hat, mean over the "
                                          "last batch."),
    _g("mean_eta", "writer_eta_mean", "Writer's learned write strength eta, mean over the "
                                      "last batch."),
    _c("replay_steps_total", "replay_steps_total", "Rehearsed (replayed) batches trained on."),
    _c("scored_total", "scored_total", "Positions (targets, or heard clips of a label-free "
       "stream) the training steps scored, cumulative."),
    _g("step_seconds", "step_duration_seconds", "Wall time of the last training step."),
    _g(
        "last_step_timestamp",
        "last_step_timestamp_seconds",
        "Unix time at which the last step finished.",
    ),
)

_BY_KEY: dict[str, MetricSpec] = {spec.key: spec for spec in CATALOG}



def family_name(spec: MetricSpec) -> str:
    """The exposition family name: a counter's name without ``_total``."""
    return spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name


# Every name a catalogue metric occupies in an exposition (family, sample and a
# counter's ``_created``); a generic metric may not take one of them.
RESERVED_NAMES: frozenset[str] = frozenset(
    {spec.name for spec in CATALOG}
    | {family_name(spec) for spec in CATALOG}
    | {family_name(spec) + "_created" for spec in CATALOG if spec.kind == "counter"}
)

# Suffixes of histogram/summary/info parts; a plain gauge named so fails promtool.
RESERVED_SUFFIXES = ("_count", "_sum", "_bucket", "_created", "_info")

_INVALID_NAME_CHARS = re.compile(r"[^a-z0-9_]+")
_REPEATED_UNDERSCORES = re.compile(r"_{2,}")


def sanitise_key(key: str) -> str:
    """Turn an arbitrary trainer key into a valid Prometheus name suffix.

    Lower-cases, replaces every run of characters outside ``[a-z0-9_]`` by one
    underscore and trims underscores, so ``"Grad-Norm/total"`` becomes
    ``"grad_norm_total"``. Returns ``""`` when nothing usable is left.
    """
    text = _INVALID_NAME_CHARS.sub("_", key.lower())
    return _REPEATED_UNDERSCORES.sub("_", text).strip("_")


def generic_spec(key: str) -> MetricSpec | None:
    """The spec of a key the catalogue does not know, or None if it cannot be named.

    The trainer's convention is that ``*_total`` keys are cumulative counts, so
    those become counters; everything else becomes a gauge.
    """
    suffix = sanitise_key(key)
    if not suffix:
        return None
    name = PREFIX + suffix
    kind: MetricKind = "counter" if name.endswith("_total") else "gauge"
    if kind == "gauge" and name.endswith(RESERVED_SUFFIXES):
        name += "_value"  # a gauge may not look like a histogram's or summary's part
    return MetricSpec(key, name, kind, f"Trainer metric {key!r} (not in the OBS catalogue).")


def resolve_key(key: str) -> tuple[MetricSpec | None, str | None, bool]:
    """Find how a trainer key is exported.

    Args:
        key: a key of the metrics dict, e.g. ``"loss"`` or
            ``"data_errors_total.corrupt_video"``.

    Returns:
        ``(spec, label_value, known)``: the spec (None if the key cannot be
        exported at all), the value of the spec's extra label (None for plain
        metrics) and whether the key is in the catalogue.
    """
    spec = _BY_KEY.get(key)
    if spec is not None:
        label_value = UNSPECIFIED_LABEL_VALUE if spec.label else None
        return spec, label_value, True
    family, dot, suffix = key.partition(".")
    spec = _BY_KEY.get(family)
    if dot and spec is not None and spec.label is not None:
        return spec, suffix or UNSPECIFIED_LABEL_VALUE, True
    return generic_spec(key), None, False


def exported_names() -> frozenset[str]:
    """Every metric name the catalogue exports (what dashboards and alerts may use)."""
    return frozenset(spec.name for spec in CATALOG)
