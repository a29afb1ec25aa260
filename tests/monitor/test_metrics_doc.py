"""docs/metrics.md lists every metric, and its MLflow mapping code (which the gateway copies) is right."""
from __future__ import annotations

import os
import re

from hpc._sampling import CUMULATIVE, METRICS

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")
# MLflow's own system-metric names, as docs/facts.md lists them (checked against MLflow 3.17).
MLFLOW_NATIVE = {
    "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage", "system/gpu_{i}_utilization_percentage",
    "system/gpu_{i}_memory_usage_percentage", "system/gpu_{i}_memory_usage_megabytes",
    "system/gpu_{i}_power_usage_watts", "system/gpu_{i}_power_usage_percentage", "system/disk_usage_percentage",
    "system/disk_usage_megabytes", "system/disk_available_megabytes", "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
}
UNIT_SUFFIXES = ("_percent", "_bytes", "_w", "_c", "_mhz", "_count")


def _doc() -> str:
    with open(DOC, encoding="utf-8") as fh:
        return fh.read()


def _table():
    rows = {}
    for line in _doc().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`") and cells[5].startswith("`system/"):
            rows[cells[0].strip("`")] = (cells[2], cells[5].strip("`"), cells[6])
    return rows


def _mapping_module():
    block = re.search(r"### The mapping.*?```python\n(.*?)```", _doc(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/metrics.md", "exec"), namespace)  # noqa: S102  (our own doc)
    return namespace


def test_the_table_lists_exactly_the_metrics_the_monitor_writes_with_units_in_names():
    table = _table()
    assert set(table) == set(METRICS)
    for name, (agg, _, _) in table.items():
        assert agg == METRICS[name][0], name
        assert name.endswith(UNIT_SUFFIXES), name
        assert bool(CUMULATIVE.match(name.replace("{i}", "0"))) == (agg == "last"), name


def test_the_mapping_code_agrees_with_the_table_and_hits_every_mlflow_native_name():
    to_mlflow = _mapping_module()["mlflow_system_metric"]
    produced = set()
    for name, (_, mlflow_name, factor) in _table().items():
        concrete = name.replace("{i}", "3")
        key, value = to_mlflow(concrete, 2_000_000.0)
        assert key == mlflow_name.replace("{i}", "3"), name
        assert value == (2.0 if factor == "/ 1e6" else 2_000_000.0), name
        assert key.startswith("system/") and "/" not in key[len("system/"):]
        produced.add(mlflow_name)
    assert MLFLOW_NATIVE <= produced


def test_an_unknown_future_key_still_maps_somewhere_sensible():
    to_mlflow = _mapping_module()["mlflow_system_metric"]
    assert to_mlflow("gpu/12/fan_percent", 40.0) == ("system/gpu_12_fan_percent", 40.0)
    assert to_mlflow("gpu/12/power_w", 300.0) == ("system/gpu_12_power_usage_watts", 300.0)
