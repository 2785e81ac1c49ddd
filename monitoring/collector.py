"""A Prometheus collector that holds the trainer's latest metric values.

The trainer reports cumulative totals (``samples_total``, ``sync_bytes_total``,
``data_errors_total.<kind>`` …) rather than increments, so the usual
``Counter.inc()`` objects do not fit: this collector keeps the last value of
every key and, at scrape time, emits counters whose value *is* the total and
gauges for everything else. Every series carries the ``job``, ``rank`` and
``node`` labels of the process.

Updates come from the training thread and scrapes from the HTTP server's
thread, so the table is guarded by a lock and scrapes work on a snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from monitoring.metric_catalog import (
    BASE_LABELS,
    CATALOG,
    RESERVED_NAMES,
    MetricSpec,
    family_name,
    resolve_key,
)

log = logging.getLogger(__name__)

# (metric name, extra label value or None) -> value
_SeriesKey = tuple[str, str | None]


@dataclass
class _Entry:
    spec: MetricSpec
    values: dict[str | None, float]


class TrainerMetricsCollector(Collector):
    """Latest values of the trainer's metrics, exposed as Prometheus families.

    Args:
        job: value of the ``job`` label.
        rank: global rank, value of the ``rank`` label.
        node: host name, value of the ``node`` label.
    """

    def __init__(self, job: str, rank: int, node: str) -> None:
        self._label_values = (job, str(rank), node)
        self._lock = threading.Lock()
        # Catalogue metrics first, in catalogue order, then generic ones in arrival order.
        self._entries: dict[str, _Entry] = {}
        self._generic_owner: dict[str, str] = {}  # generic family name -> key that claimed it
        self._warned: set[str] = set()

    @property
    def label_values(self) -> tuple[str, str, str]:
        """The ``(job, rank, node)`` values on every series."""
        job, rank, node = self._label_values
        return job, rank, node

    def update(self, metrics: Mapping[str, float], step: int) -> None:
        """Record one log interval's metrics.

        Args:
            metrics: the trainer's dict; unknown keys are exported as generic
                ``obs_<sanitised key>`` metrics (warned about once).
            step: the step the values belong to; exported as ``obs_step``.

        Raises:
            ValueError: if a value (or ``step``) is not a real number.
        """
        values = {key: _as_float(key, value) for key, value in metrics.items()}
        values["step"] = _as_float("step", step)
        with self._lock:
            for key, value in values.items():
                self._store(key, value)

    def _store(self, key: str, value: float) -> None:
        spec, label_value, known = resolve_key(key)
        if spec is None:
            self._warn_once(key, f"metric key {key!r} has no usable characters; it is ignored")
            return
        if not known:
            # Generic "x" (gauge) and "x_total" (counter) would share family "obs_x".
            family = family_name(spec)
            owner = self._generic_owner.setdefault(family, key)
            if family in RESERVED_NAMES or spec.name in RESERVED_NAMES or owner != key:
                self._warn_once(
                    key,
                    f"metric key {key!r} would be exported as {spec.name}, which is already "
                    "taken; it is ignored",
                )
                return
            self._warn_once(key, f"metric key {key!r} is not in the catalogue; exported as "
                            f"generic {spec.kind} {spec.name}")
        entry = self._entries.get(spec.name)
        if entry is None:
            entry = self._entries[spec.name] = _Entry(spec, {})
        entry.values[label_value] = value

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def snapshot(self) -> dict[_SeriesKey, float]:
        """A copy of every stored value keyed by (metric name, extra label value)."""
        with self._lock:
            return {
                (name, label): value
                for name, entry in self._entries.items()
                for label, value in entry.values.items()
            }

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Yield one family per metric seen so far (called by the registry on scrape)."""
        with self._lock:
            entries = [(e.spec, dict(e.values)) for e in self._ordered_entries()]
        for spec, values in entries:
            labels = list(BASE_LABELS) + ([spec.label] if spec.label else [])
            family: CounterMetricFamily | GaugeMetricFamily
            if spec.kind == "counter":
                family = CounterMetricFamily(spec.name, spec.help, labels=labels)
            else:
                family = GaugeMetricFamily(spec.name, spec.help, labels=labels)
            for label_value, value in sorted(values.items(), key=lambda kv: kv[0] or ""):
                extra = [label_value] if spec.label and label_value is not None else []
                family.add_metric([*self._label_values, *extra], value)
            yield family

    def _ordered_entries(self) -> list[_Entry]:
        rank = {spec.name: i for i, spec in enumerate(CATALOG)}
        return sorted(self._entries.values(), key=lambda e: rank.get(e.spec.name, len(rank)))


def _as_float(key: str, value: object) -> float:
    """``float(value)``, or a ValueError naming the key; NaN and ±inf pass through."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metric {key!r} must be a number, got {type(value).__name__} {value!r}"
        ) from exc
    # NaN and ±inf are kept: Prometheus carries them and a non-finite loss is
    # exactly what an operator must see, not a reason to crash the exporter.
    return result
