"""Settings precedence, config validation, TLS precedence, and the name mapping."""
from __future__ import annotations

import math
import os
import re

import pytest

from sync_gateway.errors import ConfigError
from sync_gateway.settings import Settings, TlsSettings
from sync_gateway.sinks import configure
from sync_gateway.sinks._http import resolve_tls
from sync_gateway.sinks.mlflow._names import (
    SYSTEM_METRICS,
    TRUNCATION_MARKER,
    flatten_config,
    metric_key,
    param_value,
    system_metric,
)


def test_yaml_beats_environment_beats_defaults(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://env:5000", "HPCSYNC_GATEWAY_ROOTS": "/a:/b",
           "HPCSYNC_GATEWAY_INTERVAL_S": "7", "XDG_CONFIG_HOME": str(tmp_path / "none")}
    s = configure(Settings.resolve(None, env), env)  # the sink's own variables: MLFLOW_TRACKING_URI
    assert s.server_url == "http://env:5000" and s.roots == ["/a", "/b"] and s.interval_s == 7
    assert s.stale_after_s == 300.0  # default
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("server: {kind: mlflow, url: 'https://file:443'}\ninterval_s: 60\ntls: {ca_bundle: /ca.pem}\n")
    s = configure(Settings.resolve(str(cfg), env), env)
    assert s.server_url == "https://file:443" and s.interval_s == 60 and s.roots == ["/a", "/b"]
    assert s.tls.ca_bundle == "/ca.pem"
    assert Settings.resolve(str(cfg), env, overrides={"interval_s": 5.0}).interval_s == 5.0


def test_default_config_path_is_read(tmp_path):
    (tmp_path / "hpc-sync").mkdir()
    (tmp_path / "hpc-sync" / "gateway.yaml").write_text("roots: [/x]\n")
    assert Settings.resolve(None, {"XDG_CONFIG_HOME": str(tmp_path)}).roots == ["/x"]


@pytest.mark.parametrize("text, needle", [
    ("rootz: [/x]\n", "unknown key(s) rootz; valid keys are: roots, server"),
    ("tls: {ca_bundel: x}\n", "unknown key(s) ca_bundel; valid keys are: ca_bundle, client_cert"),
    ("server: {kind: clearml}\n", "valid kinds are: mlflow, wandb"),
    ("server: {url: 'ftp://x'}\n", "must start with http"),
    ("interval_s: -1\n", "positive number"),
    ("batch_points: 5000\n", "from 1 to 1000"),
    ("auth: {token: abc}\n", "valid keys are: token_env, token_file"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_config_names_the_valid_keys(tmp_path, text, needle):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        configure(Settings.resolve(str(cfg), {}), {})  # the sink checks its kind and keys
    assert needle in str(e.value)


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.resolve(str(tmp_path / "nope.yaml"), {})


def test_tls_precedence_in_one_place(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {"REQUESTS_CA_BUNDLE": "/env/bundle", "SSL_CERT_FILE": "/env/file"}
    assert resolve_tls(TlsSettings(ca_bundle=str(ca)), env).verify == str(ca)
    assert resolve_tls(TlsSettings(ca_bundle=str(ca), insecure=True), env).verify is False
    assert resolve_tls(TlsSettings(truststore=True), env).truststore
    assert resolve_tls(TlsSettings(), env).verify == "/env/bundle"
    assert resolve_tls(TlsSettings(), {"SSL_CERT_FILE": "/env/file"}).source == "SSL_CERT_FILE"
    assert resolve_tls(TlsSettings(), {}).verify is True
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_tls(TlsSettings(ca_bundle=str(tmp_path / "missing.pem")), {})
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    c = resolve_tls(TlsSettings(client_cert=str(tmp_path / "c.pem"), client_key=str(tmp_path / "k.pem")), {})
    assert c.cert == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match="tls.client_key .*k2.pem does not exist"):
        resolve_tls(TlsSettings(client_cert=str(tmp_path / "c.pem"), client_key=str(tmp_path / "k2.pem")), {})


@pytest.mark.parametrize("key, want", [
    ("loss", "loss"), ("train/loss", "train/loss"), ("a b:c-d.e_f", "a b:c-d.e_f"),
    ("acc@top1", "acc_top1"), ("/lead", "lead"), ("a//b/", "a/b"), ("../x", "__/x"), ("x/./y", "x/_/y"),
    ("", "_"), ("k" * 300, "k" * 250), ("é", "é"),
])
def test_metric_key_mapping(key, want):
    assert metric_key(key) == want


def test_flatten_and_truncate():
    assert dict(flatten_config({"a": {"b": {"c": 1}}, "l": [1, 2], "e": {}, "s": "x"})) == \
        {"a.b.c": "1", "l": "[1, 2]", "e": "{}", "s": "x"}
    v = param_value("z" * 10_000)
    assert len(v) == 6000 and v.endswith(TRUNCATION_MARKER)
    assert param_value(math.inf) == "inf"


def test_system_metric_names():
    assert system_metric("cpu/system_percent") == ("system/cpu_utilization_percentage", 1.0)
    assert system_metric("gpu/3/memory_used_bytes") == ("system/gpu_3_memory_usage_megabytes", 1e-6)
    assert system_metric("gpu/12/power_w") == ("system/gpu_12_power_usage_watts", 1.0)
    assert system_metric("gpu/0/temperature_c") == ("system/gpu_0_temperature_c", 1.0)
    assert system_metric("cpu/process_percent") == ("system/cpu_process_percent", 1.0)


def test_system_metric_mapping_agrees_with_the_monitors_documentation():
    """docs/metrics.md holds the mapping table and code the monitor documents; the gateway must agree."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")
    text = open(path, encoding="utf-8").read()
    code = re.search(r"```python\n(.*?HPC_TO_MLFLOW_SYSTEM.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "docs/metrics.md", "exec"), ns)  # the documented reference implementation
    assert ns["HPC_TO_MLFLOW_SYSTEM"] == SYSTEM_METRICS
    rows = re.findall(r"^\| `([a-z]+/[^`]+)` \|.*\| `(system/[^`]+)` \| (x1|/ 1e6) \|$", text, re.M)
    assert len(rows) >= 20
    for key, mlflow_name, factor in rows:
        concrete = key.replace("{i}", "2")
        got_name, got_factor = system_metric(concrete)
        assert got_name == mlflow_name.replace("{i}", "2"), key
        assert got_factor == (1e-6 if factor == "/ 1e6" else 1.0), key
        assert ns["mlflow_system_metric"](concrete, 1.0) == (got_name, got_factor)
