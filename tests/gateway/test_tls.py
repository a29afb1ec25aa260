"""The same MLflow server behind TLS with a private CA (trustme), and with client certificates (mTLS)."""
from __future__ import annotations

import logging
import os
from dataclasses import replace

import pytest
from _ids import key
from _runwriter import RunWriter
from conftest import make_runner
from support import need

from sync_gateway.cli.doctor import doctor
from sync_gateway.engine.runner import make_sink
from sync_gateway.settings import Settings, TlsSettings

pytestmark = pytest.mark.mlflow


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    import importlib.util

    need(importlib.util.find_spec("trustme") is not None, "trustme is not installed: pip install -e '.[gateway-test]'")
    import trustme

    d = tmp_path_factory.mktemp("pki")
    ca, other_ca, client_ca = trustme.CA(), trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("gateway.lab.example")
    paths = {k: str(d / f"{k}.pem") for k in ("ca", "other_ca", "client_ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    other_ca.cert_pem.write_to_path(paths["other_ca"])
    client_ca.cert_pem.write_to_path(paths["client_ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


def _start(tmp_path_factory, pki, **kw):
    import importlib.util

    need(importlib.util.find_spec("mlflow") is not None, "mlflow is not installed: pip install -e '.[server]'")
    import mlflow_server as ms

    return ms, ms.start(str(tmp_path_factory.mktemp("tls-mlflow")), tls_cert=pki["cert"], tls_key=pki["key"],
                        **kw)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    ms, h = _start(tmp_path_factory, pki)
    yield h
    ms.stop(h)


@pytest.fixture
def tls_settings(tls_server, root, tmp_path):
    return Settings(roots=[root], server_url=tls_server.url, state_dir=str(tmp_path / "state"), retries=1)


def _one_run(root, name):
    w = RunWriter(root, "tls", name)
    w.log({"x": 1.0})
    w.exit(0)


def _sync(settings, environ):
    with make_runner(settings, sink=make_sink(settings, environ=environ, backoff_factor=0.01)) as r:
        return r.run_pass()


SYSTEM_ENV = {"REQUESTS_CA_BUNDLE": os.environ.get("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")}


@pytest.mark.parametrize("environ", [SYSTEM_ENV, {}], ids=["system-bundle-env", "certifi"])
def test_default_trust_fails_with_a_clear_message(tls_settings, root, environ):
    _one_run(root, "default")
    rep = _sync(tls_settings, environ)
    msg = rep.errors[key(root, "tls", "default")]
    assert "CERTIFICATE_VERIFY_FAILED" in msg and "set tls.ca_bundle" in msg, msg
    assert ("REQUESTS_CA_BUNDLE" if environ else "certifi") in msg


def test_tls_ca_bundle_works_and_wins_over_the_environment(tls_settings, root, pki):
    _one_run(root, "cabundle")
    s = replace(tls_settings, tls=TlsSettings(ca_bundle=pki["ca"]))
    assert _sync(s, SYSTEM_ENV).ok  # REQUESTS_CA_BUNDLE (system store) would fail: the config wins


def test_requests_ca_bundle_env_works(tls_settings, root, pki):
    _one_run(root, "envbundle")
    assert _sync(tls_settings, {"REQUESTS_CA_BUNDLE": pki["ca"]}).ok
    assert _sync(tls_settings, {"SSL_CERT_FILE": pki["ca"]}).ok


def test_wrong_ca_fails(tls_settings, root, pki):
    _one_run(root, "wrongca")
    rep = _sync(replace(tls_settings, tls=TlsSettings(ca_bundle=pki["other_ca"])), {})
    assert "CERTIFICATE_VERIFY_FAILED" in rep.errors[key(root, "tls", "wrongca")]


def test_insecure_works_with_a_loud_warning_every_pass(tls_settings, root, caplog):
    _one_run(root, "insecure")
    s = replace(tls_settings, tls=TlsSettings(insecure=True))
    with caplog.at_level(logging.WARNING), make_runner(s, sink=make_sink(s, environ={})) as r:
        assert r.run_pass().ok
        r.run_pass()
    assert sum("TLS VERIFICATION IS OFF" in m for m in caplog.messages) == 2


def test_doctor_names_the_issuer_and_the_fix(tls_settings, pki):
    lines = []
    ok = doctor(tls_settings, "/etc/gw.yaml", SYSTEM_ENV, out=lines.append)
    assert not ok
    tls_line = next(line for line in lines if line.startswith("[FAIL] tls"))
    assert "issued by" in tls_line and "trustme" in tls_line.lower() and "tls.ca_bundle" in tls_line
    assert "/etc/gw.yaml" in tls_line
    lines.clear()
    ok = doctor(replace(tls_settings, tls=TlsSettings(ca_bundle=pki["ca"])), None, {}, out=lines.append)
    assert ok, lines
    assert any(line.startswith("[ok] server: MLflow 3.") for line in lines)


def test_mutual_tls(tmp_path_factory, root, tmp_path, pki):
    ms, h = _start(tmp_path_factory, pki, tls_client_ca=pki["client_ca"], probe_cert=pki["client"])
    try:
        s = Settings(roots=[root], server_url=h.url, state_dir=str(tmp_path / "st"), retries=1,
                     tls=TlsSettings(ca_bundle=pki["ca"]))
        _one_run(root, "mtls")
        assert not _sync(s, {}).ok  # no client certificate: refused
        assert _sync(replace(s, tls=TlsSettings(ca_bundle=pki["ca"], client_cert=pki["client"])), {}).ok
    finally:
        ms.stop(h)
