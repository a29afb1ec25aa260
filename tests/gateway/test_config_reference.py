"""docs/deploy/gateway.yaml is the configuration reference: it must name exactly what Settings knows."""
from __future__ import annotations

import dataclasses
import os

import yaml

from sync_gateway.settings import _TOP, AuthSettings, Settings, SshSettings, TlsSettings
from sync_gateway.sinks import sink_class

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "deploy", "gateway.yaml")


def test_reference_lists_every_key_and_nothing_else():
    doc = yaml.safe_load(open(REFERENCE))
    assert set(doc) == set(_TOP)
    assert set(doc["server"]) == {"kind", "url", *sink_class(doc["server"]["kind"]).options}
    for name, cls in (("tls", TlsSettings), ("ssh", SshSettings)):
        assert set(doc[name]) == {f.name for f in dataclasses.fields(cls)}, name
    text = open(REFERENCE).read()
    for f in dataclasses.fields(AuthSettings):  # the example sets one method; the others are named
        assert f.name in text, f"auth.{f.name} is not described in the reference"


def test_reference_defaults_are_the_settings_defaults(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("HPCSYNC_", "MLFLOW_")):
            monkeypatch.delenv(name)
    doc = yaml.safe_load(open(REFERENCE))
    defaults = Settings()
    for key in ("lease_ttl_s", "interval_s", "stale_after_s", "timeout_s", "retries", "batch_points",
                "request_deadline_s", "max_file_bytes", "wandb_search_depth", "bundle_max_bytes",
                "state_dir", "lease_dir", "workers"):
        assert doc[key] == getattr(defaults, key), key
    for name in ("tls", "ssh"):
        for key, value in doc[name].items():
            assert value == getattr(getattr(defaults, name), key), f"{name}.{key}"
    resolved = Settings.resolve(REFERENCE)  # and the file as shipped is a valid configuration
    assert resolved.server_url == doc["server"]["url"] and resolved.ssh.keepalive_s == 30
