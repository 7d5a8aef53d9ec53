"""deploy/: the systemd unit, the Prometheus scrape config and alert rules, checked against a real scrape."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "blynk-server.service"
PROM = DEPLOY / "prometheus"
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "rate", "irate", "increase", "deriv", "delta", "max_over_time", "min_over_time", "avg_over_time", "sum",
    "max", "min", "avg", "count", "abs", "absent", "histogram_quantile", "time", "vector", "scalar",
}  # fmt: skip


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at the installed entry point (verify checks the binary exists)."""
    exe = Path(sys.executable).with_name("blynk-server")
    text = UNIT.read_text().replace("/opt/blynk-server/bin/blynk-server", str(exe))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_systemd_unit_shape():
    text = UNIT.read_text()
    service = text.split("[Service]")[1].split("[Install]")[0]
    keys = dict(line.split("=", 1) for line in service.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["User"] == "blynk-server" and keys["User"] != "root"
    assert keys["StateDirectory"] == "blynk-server"
    assert "--data-dir /var/lib/blynk-server" in keys["ExecStart"]
    assert keys["NoNewPrivileges"] == "yes"
    assert keys["StateDirectoryMode"] == "0700" and keys["UMask"] == "0077"  # the data dir holds every token
    assert "WantedBy=multi-user.target" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_for_this_machine(tmp_path))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "blynk-server.service" not in result.stderr, result.stderr  # no warnings about our unit


def _rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "blynk-server-alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_scrape_config_and_rules_structure():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "blynk-server")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9080"]
    for rule_file in config["rule_files"]:
        assert (PROM / rule_file).exists()
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {"BlynkServerDown", "BlynkSessionsDroppedSharply", "BlynkFloodControlPausing"} <= names
    assert "BlynkWriteBehindQueueGrowing" in names
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["annotations"]["summary"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_rules():
    result = subprocess.run(["promtool", "check", "rules", str(PROM / "blynk-server-alerts.yml")], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that name series (label matchers, ranges, numbers removed)."""
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r'"[^"]*"', " ", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS}


async def test_rule_metrics_exist_in_a_real_scrape(make_server):
    srv = make_server()
    async with aiohttp.ClientSession() as s, s.get(f"http://{srv.admin_host}:{srv.admin_port}/metrics") as r:
        text = await r.text()
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families), "a metric family is exported twice"
    scraped = {sample.name for family in families for sample in family.samples}
    for rule in _rules():
        for name in _metric_names(rule["expr"]):
            if name == "up":  # recorded by Prometheus per target, not exported
                continue
            assert name in scraped, f"{rule['alert']}: {name} is not in /metrics"
