"""Per-rank Prometheus exporter: the metrics sink the trainer writes to.

The trainer never imports this package; it is given a *metrics sink*, a
callable ``sink(metrics: dict[str, float], step: int) -> None`` called on every
rank at every log interval, and ``sink.close()`` at the end. :class:`PrometheusSink`
is that sink: it serves the latest values on
``http://<host>:<base_port + local_rank>/metrics`` from its own
``CollectorRegistry`` (so several sinks can live in one process and nothing
leaks into the global registry), and at ``close()`` optionally pushes the final
values to a Pushgateway, keeps them there long enough to be scraped, and deletes
them again so finished jobs leave no stale series behind.

Metric names, types and labels are defined in :mod:`monitoring.metric_catalog`;
the table is in ``docs/monitoring.md``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Info,
    ProcessCollector,
    delete_from_gateway,
    push_to_gateway,
)
from prometheus_client.exposition import start_http_server

from monitoring.collector import TrainerMetricsCollector
from monitoring.file_sd import remove_file_sd_targets, write_file_sd_targets

log = logging.getLogger(__name__)

_MAX_PORT = 65535
_PUSH_TIMEOUT_S = 10.0


@dataclass
class MetricsConfig:
    """Configuration of the per-rank metrics exporter (``[metrics]`` in the TOML).

    Attributes:
        enabled: serve metrics at all (off by default: training needs no open port).
        base_port: rank with local rank ``r`` serves on ``base_port + r``; 0 lets
            the operating system choose a free port for every rank (tests).
        host: address to bind; loopback by default so nothing is exposed
            unless asked (``"0.0.0.0"`` for a Prometheus on another host).
            ``"node"``: this node's own address, the one the other nodes of a
            multi-node job reach it at (:func:`node_bind_address`); the file_sd
            entry then names that address.
        job: value of the ``job`` label on every series (one name per run).
        pushgateway: ``http://host:port`` of a Pushgateway that receives the
            final values at ``close()``; None for no push.
        pushgateway_keep_s: seconds the pushed values stay on the Pushgateway
            before ``close()`` deletes them; keep it above twice the
            Pushgateway's scrape interval so Prometheus sees them.
        file_sd_dir: a directory Prometheus' ``file_sd_configs`` watches (on a
            file system its host sees); each rank writes ``<job>-rank<r>.json``
            there listing its own endpoint while it serves, and removes it at
            the end. Empty: none written. Use with ``host = "0.0.0.0"``.
    """

    enabled: bool = False
    base_port: int = 9400
    host: str = "127.0.0.1"
    job: str = "obs"
    pushgateway: str | None = None
    pushgateway_keep_s: float = 30.0
    file_sd_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"metrics.enabled must be true or false, got {self.enabled!r}")
        if (
            isinstance(self.base_port, bool)
            or not isinstance(self.base_port, int)
            or not 0 <= self.base_port <= _MAX_PORT
        ):
            raise ValueError(
                f"metrics.base_port must be an integer in 0..{_MAX_PORT}, got {self.base_port!r}"
            )
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"metrics.host must be a non-empty address, got {self.host!r}")
        if not isinstance(self.job, str) or not self.job.strip():
            raise ValueError(f"metrics.job must be a non-empty name, got {self.job!r}")
        if self.pushgateway is not None and (
            not isinstance(self.pushgateway, str)
            or not self.pushgateway.strip()
            or any(ch.isspace() for ch in self.pushgateway)
        ):
            raise ValueError(
                "metrics.pushgateway must be an address like http://127.0.0.1:9091 or unset, "
                f"got {self.pushgateway!r}"
            )
        keep = self.pushgateway_keep_s
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (
            math.isfinite(keep) and keep >= 0
        ):
            raise ValueError(
                f"metrics.pushgateway_keep_s must be a finite number >= 0, got {keep!r}"
            )


def node_bind_address(env: Mapping[str, str] | None = None) -> str:
    """The address ``metrics.host = "node"`` binds: where other hosts reach this node.

    Inside ``obs submit``'s tasks this is ``OBS_NODE_ADDR`` (the node's address on
    the route to the rendezvous host, see :func:`launch.jobs.job.node_address`).
    Elsewhere the source address of the route to ``MASTER_ADDR``, and without one
    the address this host's name resolves to.

    Raises:
        ValueError: if no address can be found.
    """
    env = os.environ if env is None else env
    if env.get("OBS_NODE_ADDR"):
        return env["OBS_NODE_ADDR"]
    peer = env.get("MASTER_ADDR")
    if peer:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect((peer, 9))  # a UDP connect sends nothing; it picks the route
            return str(probe.getsockname()[0])
        except OSError:
            pass
        finally:
            probe.close()
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as exc:
        raise ValueError(f'metrics.host = "node": no address for this node: {exc}') from exc


def default_node_name() -> str:
    """The node label: SLURM's node name inside a SLURM job, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class PrometheusSink:
    """Serves one rank's training metrics to Prometheus.

    Args:
        cfg: exporter configuration (``cfg.enabled`` is not consulted here:
            constructing a sink always serves).
        rank: global rank (``rank`` label).
        local_rank: rank on this node; the port is ``cfg.base_port + local_rank``.
        node: ``node`` label; defaults to :func:`default_node_name`.

    Attributes:
        port: the port actually bound (differs from the configured one only
            when ``cfg.base_port`` is 0).
        url: the scrape address, ``http://host:port/metrics``.

    Raises:
        ValueError: if the rank, local rank or resulting port is invalid.
        OSError: if the port cannot be bound (message names it and why).
    """

    def __init__(
        self, cfg: MetricsConfig, rank: int, local_rank: int, node: str | None = None
    ) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
        if isinstance(local_rank, bool) or not isinstance(local_rank, int) or local_rank < 0:
            raise ValueError(f"local_rank must be an integer >= 0, got {local_rank!r}")
        wanted = cfg.base_port + local_rank if cfg.base_port else 0
        if wanted > _MAX_PORT:
            raise ValueError(
                f"metrics.base_port {cfg.base_port} + local_rank {local_rank} = {wanted} "
                f"exceeds the largest port {_MAX_PORT}"
            )
        self.cfg = cfg
        self.rank = rank
        self.local_rank = local_rank
        self.node = node if node else default_node_name()
        self._collector = TrainerMetricsCollector(cfg.job, rank, self.node)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        # The Pushgateway gets the training metrics only: a finished process's
        # process_* values left there would read as a live process.
        self._push_registry = CollectorRegistry(auto_describe=False)
        self._push_registry.register(self._collector)
        register_process_and_info(self.registry, cfg.job, rank, self.node)
        self.host = node_bind_address() if cfg.host == "node" else cfg.host
        try:
            server, thread = start_http_server(wanted, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {self.host}:{wanted} (metrics.base_port "
                f"{cfg.base_port} + local_rank {local_rank}): {exc.strerror or exc}",
            ) from exc
        self._server: WSGIServer | None = server
        self._thread = thread
        self.port: int = int(server.server_address[1])
        self.url = f"http://{_url_host(self.host)}:{self.port}/metrics"
        log.info("rank %d serves metrics on %s", rank, self.url)
        self.file_sd_path: Path | None = None
        if cfg.file_sd_dir:
            self.file_sd_path = self._register_file_sd(Path(cfg.file_sd_dir))

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        """Record the metrics of one log interval (the trainer's sink call).

        Args:
            metrics: trainer key -> value; see ``docs/monitoring.md`` for the keys.
            step: the step the values belong to.

        Raises:
            ValueError: if a value is not a number (the key is named).
        """
        self._collector.update(metrics, step)

    def _register_file_sd(self, folder: Path) -> Path:
        """Write this rank's file_sd entry: the address another host reaches it at."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # bound to every interface: name this host
            host = socket.getfqdn()
        labels = {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if os.environ.get(
            "SLURM_JOB_ID") else None
        path = write_file_sd_targets(folder / f"{self.cfg.job}-rank{self.rank}.json",
                                     [(host, self.port)], labels)
        log.info("rank %d registered %s:%d for Prometheus in %s", self.rank, host, self.port,
                 path)
        return path

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has stopped the HTTP server."""
        return self._server is None

    def values(self) -> dict[tuple[str, str | None], float]:
        """Current values keyed by (metric name, extra label value); for tests and logs."""
        return self._collector.snapshot()

    def close(self) -> None:
        """Push to the Pushgateway (if configured), delete there, stop serving.

        A failing Pushgateway is logged, not raised: the training run has
        finished by now and must not be reported as failed because monitoring
        could not be reached. Calling ``close()`` twice is harmless.
        """
        if self._server is None:
            return
        if self.cfg.pushgateway:
            self._push_then_delete(self.cfg.pushgateway)
        if self.file_sd_path is not None:
            remove_file_sd_targets(self.file_sd_path)  # Prometheus stops scraping this rank
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)
        log.info("rank %d stopped serving metrics on %s", self.rank, self.url)

    def _push_then_delete(self, gateway: str) -> None:
        # The grouping key makes each rank its own group, so ranks never overwrite
        # each other and the delete removes exactly this rank's series.
        grouping = {"rank": str(self.rank), "node": self.node}
        try:
            push_to_gateway(
                gateway,
                job=self.cfg.job,
                registry=self._push_registry,
                grouping_key=grouping,
                timeout=_PUSH_TIMEOUT_S,
            )
        except OSError as exc:
            log.error("rank %d could not push metrics to %s: %s", self.rank, gateway, exc)
            return
        log.info(
            "rank %d pushed final metrics to %s; deleting them in %.1f s",
            self.rank,
            gateway,
            self.cfg.pushgateway_keep_s,
        )
        time.sleep(self.cfg.pushgateway_keep_s)
        try:
            delete_from_gateway(
                gateway, job=self.cfg.job, grouping_key=grouping, timeout=_PUSH_TIMEOUT_S
            )
        except OSError as exc:
            log.error("rank %d could not delete its metrics on %s: %s", self.rank, gateway, exc)

    def __enter__(self) -> PrometheusSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def obs_version() -> str:
    """The installed ``obs`` package's version (``0+unknown`` when run from a bare tree)."""
    try:
        return importlib.metadata.version("obs")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def register_process_and_info(registry: CollectorRegistry, job: str, rank: int,
                              node: str) -> None:
    """``process_*`` (CPU, memory, open files, start time), ``obs_build_info`` and
    ``obs_run_info`` on ``registry``.

    The process metrics are what an operator reads first when a rank slows down
    or leaks; the info metrics (value 1, the facts in labels) let dashboards
    join a run's series with the code and the process that produced them.
    """
    ProcessCollector(registry=registry)
    build = Info("obs_build", "Version of OBS and of the Python and PyTorch it runs on.",
                 registry=registry)
    import torch  # already imported by the trainer; here only for its version

    build.info({"version": obs_version(), "python": platform.python_version(),
                "torch": str(torch.__version__)})
    run = Info("obs_run", "The run this exporter serves: job, rank, node and process id.",
               registry=registry)
    run.info({"job": job, "rank": str(rank), "node": node, "pid": str(os.getpid())})


def _url_host(host: str) -> str:
    """Host part of a URL: wildcard binds are reached via loopback, IPv6 is bracketed."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def start_sink_for_current_process(cfg: MetricsConfig) -> PrometheusSink:
    """Start the sink of this process, reading its rank from the environment.

    Uses ``obs_dist.engine.dist`` (``RANK``/``LOCAL_RANK`` or the live process group),
    so it works under ``obs train --nproc``, torchrun and ``obs submit`` alike.

    Args:
        cfg: exporter configuration; must have ``enabled = true``.

    Returns:
        A serving :class:`PrometheusSink`.

    Raises:
        ValueError: if ``cfg.enabled`` is false (starting a server the config
            turned off would be a surprise) or the environment's ranks are bad.
    """
    if not cfg.enabled:
        raise ValueError("metrics.enabled is false; not starting a metrics server")
    # Imported here so that the exporter itself stays importable without torch.
    from obs_dist.engine import dist

    return PrometheusSink(cfg, rank=dist.get_rank(), local_rank=dist.get_local_rank())
