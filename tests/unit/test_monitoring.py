"""The monitoring files: promtool validates the scrape config and the rules, and the rule unit
tests fire every alert on synthetic series and keep it quiet on healthy ones; the dashboard and
the rules only use metrics bemq exports; no metric is labelled by an id."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import ops.metrics  # noqa: F401  (registers the worker metrics)
import producers.http.middleware  # noqa: F401  (registers the gateway metrics)

pytestmark = pytest.mark.timeout(120)
MONITORING = Path(__file__).parents[2] / "ops" / "monitoring"
COLLECTED = {"bem_jobs", "bem_workers_alive", "bem_queue_depth", "bem_gpu_memory_bytes",
             "bem_tenant_queued_items", "bem_tenant_oldest_queued_seconds"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("BEMQ_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool is missing: install Debian's prometheus package (make test "
                        "does when it can)")
        pytest.skip("promtool is missing: install Debian's prometheus package to run these")
    return found


def exported() -> set[str]:
    """Every series name bemq's registries can produce (a labelled metric has no sample until
    it is first used, so names come from the families and their types)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    names = set(COLLECTED)
    for metric in REGISTRY.collect():
        names |= {metric.name + s for s in suffixes.get(metric.type, ("",))}
    return {n for n in names if n.startswith("bem_")}


def test_promtool_checks_config_and_rules(tmp_path: Path) -> None:
    tool = promtool()
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(MONITORING / name, tmp_path / name)
    (tmp_path / "bemq-api-key").write_text("bemq-example\n")
    for args in (["check", "config", str(tmp_path / "prometheus.yml")],
                 ["check", "rules", str(tmp_path / "alerts.yml")],
                 ["test", "rules", str(MONITORING / "alerts_test.yml")]):
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_rule_test() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}
    tested = {t["alertname"] for case in
              yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert alerts == tested
    fired = {t["alertname"] for case in
             yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
             for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == alerts  # each one fires somewhere, and is quiet somewhere (above)


def test_dashboard_and_rules_use_exported_metrics_only() -> None:
    known = exported()
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"HTTP request rate", "Online latency percentiles", "Queue depth", "Canary weight",
            "Drift alerts"} <= titles and any("Padding" in t for t in titles)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
              for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bbem_[a-z_]+", e)}
    assert used and used <= known, used - known


def test_no_metric_is_labelled_by_an_id() -> None:
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            assert not {"id", "job_id", "custom_id", "batch_id", "request_id"} & set(
                sample.labels), sample
