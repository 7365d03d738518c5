"""examples/deploy/grafana/gpuslice.json, the dashboard for gpuslice-monitor: it imports into
Grafana (a Prometheus input, panels in a 24-column grid, unique ids), and every metric it queries
is one the exporter emits: the families named in examples/monitor/monitor.hpp and, when
GPUSLICE_MONITOR names the built exporter, the families a scrape of it declares. It shows all of
HAMi's families the exporter emits and gpuslice's own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "deploy" / "grafana" / "gpuslice.json"
MONITOR_SOURCE = ROOT / "examples" / "monitor" / "monitor.hpp"
MONITOR = os.environ.get("GPUSLICE_MONITOR", "")
FAKE_DIR = os.environ.get("GPUSLICE_FAKE_NVML_DIR", "")

# PromQL words that are not metric names (functions are told apart by the "(" after them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
# The families HAMi's own exporter uses and gpuslice's exporter keeps, under --legacy-metrics.
LEGACY = re.compile(r"^(vGPU_|Device_|HostGPU|HostCore|nodeGPU)")


def panels(d: dict) -> list[dict]:
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(panels(p))
    return out


def expressions(d: dict) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                      # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)                           # dashboard variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        after = e[m.end():].lstrip()
        if after.startswith("(") or m.group() in KEYWORDS:
            continue
        names.add(m.group())
    return names


def variable_metrics(d: dict) -> set[str]:
    out = set()
    for v in d["templating"]["list"]:
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        out |= set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", q))
    return out


def queried(d: dict) -> set[str]:
    names = set()
    for e in expressions(d):
        names |= metric_names(e)
    return names | variable_metrics(d)


def families_in_source() -> set[str]:
    """Family names the exporter's code writes (its helpers take the name first)."""
    text = MONITOR_SOURCE.read_text()
    found = set(re.findall(r'\b(?:per_device|per_ctr|rated|host|legacy_dev|w\.family)\(\s*"(\w+)"',
                           text))
    assert len(found) >= 15, f"{MONITOR_SOURCE}: expected the exporter's family names"
    return found


DASH = json.loads(DASHBOARD.read_text())


def test_metric_names_are_read_from_promql_as_prometheus_would():
    assert metric_names('sum by (reason) (rate(a_total{x="y{z}"}[5m])) / b') == {"a_total", "b"}
    assert metric_names("time() - c_seconds") == {"c_seconds"}
    assert metric_names('d{node=~"$node"} > 0 and on (pod) e') == {"d", "e"}


def test_the_dashboard_imports_into_grafana():
    (inp,) = DASH["__inputs"]
    assert (inp["type"], inp["pluginId"]) == ("datasource", "prometheus")
    ds = "${" + inp["name"] + "}"
    ids = [p["id"] for p in panels(DASH)]
    assert len(ids) == len(set(ids))
    assert DASH["uid"] and DASH["title"] and DASH["schemaVersion"] >= 30
    for p in panels(DASH):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == ds and p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == ds and t["refId"], p["title"]
    for v in DASH["templating"]["list"]:
        assert v["datasource"]["uid"] == ds


def test_every_metric_the_dashboard_queries_is_in_the_exporters_code():
    emitted = families_in_source()
    names = queried(DASH)
    assert names and names <= emitted, sorted(names - emitted)
    # HAMi's families (all of them) and gpuslice's own.
    hami = {n for n in emitted if n.startswith("hami_")}
    assert hami and hami <= names, sorted(hami - names)
    assert len({n for n in names if n.startswith("gpuslice_")}) >= 8


@pytest.mark.skipif(not os.path.exists(MONITOR) or not FAKE_DIR,
                    reason="needs GPUSLICE_MONITOR and GPUSLICE_FAKE_NVML_DIR (run through ctest)")
def test_every_metric_the_dashboard_queries_is_one_the_running_exporter_declares():
    ledgers = tempfile.mkdtemp(prefix="gsdash")
    env = dict(os.environ, LD_LIBRARY_PATH=FAKE_DIR, FAKE_CUDA_DEVICES="1",
               FAKE_CUDA_MEMORY="16Gi")
    proc = subprocess.Popen([MONITOR, "--ledger-dir", ledgers, "--listen", "127.0.0.1:0",
                             "--node-name", "n1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        shutil.rmtree(ledgers, ignore_errors=True)
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert len(declared) >= 15, text
    # Counters may be declared without their _total suffix (OpenMetrics' way).
    names = queried(DASH)
    missing = {n for n in names if n not in declared and n.removesuffix("_total") not in declared}
    assert not missing, sorted(missing)
    assert {n for n in declared if n.startswith("hami_")} <= names
