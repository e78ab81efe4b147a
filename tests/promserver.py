"""A real Prometheus server (Debian's `prometheus`) in a test namespace, and HTTP from inside it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.netns import VethPair

PROM_PORT = 9090
_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def http_get(pair: VethPair, ns: str, url: str) -> str:
    """GET `url` from inside namespace `ns` (its loopback is not ours)."""
    return pair.run(ns, sys.executable, "-c", _GET, url).stdout


class PromServer:
    """Prometheus scraping `target` every second, storage in `workdir`."""

    def __init__(self, pair: VethPair, ns: str, target: str, workdir: Path) -> None:
        self.pair, self.ns = pair, ns
        cfg = workdir / "prometheus.yml"
        cfg.write_text("global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
                       f"scrape_configs:\n  - job_name: espmeter\n    static_configs: [{{targets: ['{target}']}}]\n")
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "prometheus", f"--config.file={cfg}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()}")
            try:
                if "Ready" in http_get(pair, ns, f"http://127.0.0.1:{PROM_PORT}/-/ready"):
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.3)
        raise AssertionError("prometheus did not become ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API: [{'metric': {...}, 'value': [t, 'v']}, ...]."""
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        doc = json.loads(http_get(self.pair, self.ns, url))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def vector(self, promql: str, labels: tuple[str, ...]) -> dict[tuple, int]:
        """{label values: int value} of an instant query."""
        return {tuple(r["metric"].get(k, "") for k in labels): int(float(r["value"][1])) for r in self.query(promql)}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
