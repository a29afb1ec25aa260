"""Where each setting comes from (issue 20): settings.py resolves precedence and knows no sink; the MLflow sink
applies its own MLFLOW_TRACKING_* variables at the environment's rank; nothing is dropped silently."""
from __future__ import annotations

import ast
import os

import pytest

from sync_gateway.errors import ConfigError
from sync_gateway.settings import Settings, TlsSettings
from sync_gateway.sinks import configure, make_sink

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _resolve(tmp_path, env, config=None):
    path = None
    if config is not None:
        path = tmp_path / "gw.yaml"
        path.write_text(config)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "none"), **env}
    return configure(Settings.resolve(str(path) if path else None, env), env)


def test_a_scheme_less_hpcsync_server_url_is_an_error_naming_it_without_credentials(tmp_path):
    with pytest.raises(ConfigError) as e:
        _resolve(tmp_path, {"HPCSYNC_SERVER_URL": "alice:s3cret@mlflow.lab:5000"})
    msg = str(e.value)
    assert "HPCSYNC_SERVER_URL" in msg and "mlflow.lab:5000" in msg and "https://" in msg, msg
    assert "s3cret" not in msg


@pytest.mark.parametrize("uri", ["file:///home/alice/mlruns", "sqlite:///mlflow.db", "hpc:///scratch/runs",
                                 "databricks"])
def test_a_local_mlflow_tracking_uri_is_named_when_no_server_url_is_set(tmp_path, uri):
    s = _resolve(tmp_path, {"MLFLOW_TRACKING_URI": uri})  # commands that need no server still work
    assert s.server_url is None
    with pytest.raises(ConfigError) as e:
        make_sink(s, {"MLFLOW_TRACKING_URI": uri})
    msg = str(e.value)
    assert "MLFLOW_TRACKING_URI" in msg and uri in msg and "server.url" in msg, msg
    # ... and with a server.url in the config, the local store is simply outranked
    s = _resolve(tmp_path, {"MLFLOW_TRACKING_URI": uri}, "server: {url: 'https://mlflow.lab'}\n")
    assert s.server_url == "https://mlflow.lab"


def test_the_mlflow_cert_variables_are_honoured_below_the_config_file(tmp_path):
    ca, client = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.write_text("ca")
    client.write_text("cert and key")
    env = {"MLFLOW_TRACKING_URI": "https://mlflow.lab", "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca),
           "MLFLOW_TRACKING_CLIENT_CERT_PATH": str(client)}
    s = _resolve(tmp_path, env)
    assert s.tls.ca_bundle == str(ca) and s.tls.client_cert == str(client)
    sink = make_sink(s, env)
    assert sink.http.tls.verify == str(ca) and sink.http.tls.source == "MLFLOW_TRACKING_SERVER_CERT_PATH"
    assert sink.http.tls.cert == str(client)
    # Any trust choice in the config wins over the variable: truststore, insecure or another bundle.
    assert _resolve(tmp_path, env, "tls: {truststore: true}\n").tls.ca_bundle is None
    assert _resolve(tmp_path, env, "tls: {ca_bundle: /etc/lab.pem}\n").tls.ca_bundle == "/etc/lab.pem"
    assert _resolve(tmp_path, env, "tls: {client_cert: /c.pem, client_key: /k.pem}\n").tls.client_cert == "/c.pem"
    # A wrong path is reported with the variable that gave it.
    bad = {**env, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_SERVER_CERT_PATH .*missing.pem does not exist"):
        make_sink(_resolve(tmp_path, bad), bad)


def test_insecure_from_the_environment_yields_to_the_config_and_conflicts_with_a_cert_path(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "https://mlflow.lab", "MLFLOW_TRACKING_INSECURE_TLS": "1"}
    assert _resolve(tmp_path, env).tls.insecure  # "1" as MLflow reads it
    assert not _resolve(tmp_path, env, "tls: {insecure: false}\n").tls.insecure  # an explicit false wins
    assert not _resolve(tmp_path, env, "tls: {ca_bundle: /etc/lab.pem}\n").tls.insecure  # ... and any trust key
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH"):
        _resolve(tmp_path, {**env, "MLFLOW_TRACKING_SERVER_CERT_PATH": "/ca.pem"})


def test_precedence_argument_config_generic_variable_sink_variable_default(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://mlflow-var", "HPCSYNC_SERVER_URL": "http://hpcsync-var"}
    assert _resolve(tmp_path, env).server_url == "http://hpcsync-var"
    s = _resolve(tmp_path, env, "server: {url: 'http://config'}\n")
    assert s.server_url == "http://config" and s.origin("server_url") == "server.url"
    s = _resolve(tmp_path, {"MLFLOW_TRACKING_URI": "http://mlflow-var"})
    assert s.server_url == "http://mlflow-var" and s.origin("server_url") == "MLFLOW_TRACKING_URI"
    assert configure(s, env) == s  # applying it again changes nothing
    s = Settings.resolve(None, {"XDG_CONFIG_HOME": str(tmp_path)}, overrides={"interval_s": 5.0})
    assert s.origin("interval_s") == "argument"
    # Settings built in code (a library user, a test) are never overridden by the environment.
    built = Settings(server_url="http://built", tls=TlsSettings(truststore=True))
    s = configure(built, {"MLFLOW_TRACKING_URI": "http://mlflow-var", "MLFLOW_TRACKING_SERVER_CERT_PATH": "/x"})
    assert s.server_url == "http://built" and s.tls.ca_bundle is None


def test_an_auth_section_replaces_the_mlflow_credentials_as_a_whole(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://x", "MLFLOW_TRACKING_TOKEN": "t0ken"}
    assert _resolve(tmp_path, env).auth.token_env == "MLFLOW_TRACKING_TOKEN"
    s = _resolve(tmp_path, env, "auth: {username: bob, password_env: PW}\n")
    assert s.auth.token_env is None and s.auth.username == "bob"


def test_settings_and_the_http_layer_name_no_mlflow_variable():
    """Only the MLflow sink reads MLFLOW_*: no string in the code of settings.py or sinks/_http.py names one
    (docstrings may, as an example of a sink's variable)."""
    for rel in (("sync_gateway", "settings.py"), ("sync_gateway", "sinks", "_http.py")):
        tree = ast.parse(open(os.path.join(REPO, *rel), encoding="utf-8").read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and "MLFLOW" in n.value and id(n) not in docstrings]
        assert not named, (rel, named)
