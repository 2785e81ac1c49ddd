"""Test helper: run a real Prometheus (or Pushgateway) on loopback and query it.

The monitoring tests start the Debian ``prometheus`` binary with a generated
configuration in a temporary directory, on ``127.0.0.1:<free port>``, and talk
to it through its HTTP API exactly as Grafana would. Nothing here is a fake:
if the binary is missing the tests that need it skip with a reason.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from launch.jobs.spawn import free_port

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "monitoring" / "prometheus"
DASHBOARD = REPO / "monitoring" / "grafana" / "obs-training.json"

T = TypeVar("T")


def free_port_run(count: int) -> int:
    """A base port such that ``base .. base+count-1`` were all free a moment ago."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        socks = []
        try:
            for offset in range(count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"found no run of {count} free ports on 127.0.0.1")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.2) -> T:
    """Call ``probe`` until it returns something other than None (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body) for HTTP errors too, raises on no connection."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _ready(url: str) -> bool | None:
    try:
        status, _ = http_get(url, timeout_s=1.0)
    except OSError:
        return None
    return True if status == 200 else None


class LoopbackServer:
    """A server binary started on 127.0.0.1:<free port>, logging into ``workdir``."""

    def __init__(self, argv: Sequence[str], port: int, workdir: Path, name: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(f"{name} to be ready", self._probe_ready, timeout_s=30.0)
        except BaseException:
            self.stop()
            raise

    def _probe_ready(self) -> bool | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        return _ready(f"{self.url}/-/ready")

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Terminate the server (kill after 10 s) and close its log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class PrometheusServer(LoopbackServer):
    """``/usr/bin/prometheus`` with ``config`` written to ``workdir/prometheus.yml``.

    Rule files named in ``config`` are resolved relative to ``workdir``: copy
    them there first (see :func:`shipped_config`).
    """

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus binary not found")
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        argv = [
            binary,
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            "--log.level=warn",
        ]
        super().__init__(argv, port, workdir, "prometheus")

    def api(self, path: str, params: dict[str, str] | list[tuple[str, str]]) -> dict[str, Any]:
        """GET an ``/api/v1`` endpoint; returns the decoded JSON body (also on HTTP 4xx)."""
        query = urllib.parse.urlencode(params)
        _, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    def query(self, expr: str) -> dict[str, Any]:
        """Evaluate an instant PromQL query now; the full API response."""
        return self.api("query", {"query": expr})

    def query_range(self, expr: str, seconds: float, step_s: float = 1.0) -> dict[str, Any]:
        """Evaluate ``expr`` over the last ``seconds`` (as a Grafana panel does)."""
        now = time.time()
        params = {"query": expr, "start": f"{now - seconds:.3f}", "end": f"{now:.3f}",
                  "step": f"{step_s}"}
        return self.api("query_range", params)

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of the series matching a selector (``/api/v1/series``)."""
        response = self.api("series", [("match[]", match)])
        if response.get("status") != "success":
            raise AssertionError(f"series {match!r} failed: {response}")
        result: list[dict[str, str]] = response["data"]
        return result


class PushgatewayServer(LoopbackServer):
    """``prometheus-pushgateway`` in memory on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
        if binary is None:
            raise RuntimeError("pushgateway binary not found")
        port = free_port()
        argv = [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        super().__init__(argv, port, workdir, "pushgateway")

    def metrics_text(self) -> str:
        """The Pushgateway's own /metrics exposition (includes everything pushed)."""
        _, body = http_get(f"{self.url}/metrics")
        return body.decode()


def shipped_config(workdir: Path, scrape_interval_s: float = 1.0) -> dict[str, Any]:
    """The repository's prometheus.yml, adapted to a test and its rules copied over.

    Keeps the ``obs`` scrape job exactly as shipped (honor_labels, file_sd glob
    relative to the config file) but drops its fixed static targets and the
    Pushgateway job, and shortens every interval so a test sees data in seconds.
    """
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for rule_file in config.get("rule_files", []):
        shutil.copy(PROMETHEUS_DIR / rule_file, workdir / rule_file)
    interval = f"{scrape_interval_s:g}s"
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "obs"]
    assert len(jobs) == 1, "prometheus.yml must have exactly one scrape job named obs"
    job = jobs[0]
    job.pop("static_configs", None)
    job["scrape_interval"] = interval
    job["scrape_timeout"] = interval
    for sd in job["file_sd_configs"]:
        sd["refresh_interval"] = interval
    config["scrape_configs"] = [job]
    return config


# ---------------------------------------------------------------------------
# The Grafana side: which queries the dashboard sends, with its variables filled.

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL expression of a dashboard as ``(where, expr)``.

    Covers panel targets (also inside collapsed rows) and annotation queries.
    """
    found: list[tuple[str, str]] = []

    def walk_panels(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
            walk_panels(panel.get("panels", []))

    walk_panels(dashboard["panels"])
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def dashboard_variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """The ``label_values(selector, label)`` queries of the template variables.

    Returns:
        ``(variable name, selector or None, label)`` for each query variable.
    """
    out: list[tuple[str, str | None, str]] = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.match(query.strip())
        if match is None:
            raise AssertionError(f"variable {var['name']}: unsupported query {query!r}")
        out.append((var["name"], match.group("selector"), match.group("label")))
    return out


def substitute_variables(expr: str, values: dict[str, str]) -> str:
    """Fill Grafana variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``) like Grafana does.

    Raises:
        KeyError: for a variable ``values`` does not define (a typo in the dashboard).
    """

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"dashboard variable ${name} has no test value (in {expr!r})")
        return values[name]

    return _VARIABLE.sub(replace, expr)
