"""MLflow's own environment variables, so that an existing MLflow setup needs nothing new. Each is applied
through :meth:`Settings.from_environ`: at the environment's rank, never over the config file or an argument.

=====================================  ===========================================================
``MLFLOW_TRACKING_URI``                ``server.url``, when it is an ``http(s)://`` URL (a ``file:``,
                                       ``sqlite:``, ``databricks`` or ``hpc:`` URI is a local store:
                                       not a server to sync to; said when no URL is set otherwise)
``MLFLOW_TRACKING_TOKEN``              a bearer token (``auth``, as a whole)
``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``  basic auth (``auth``, as a whole)
``MLFLOW_TRACKING_INSECURE_TLS``       ``tls.insecure`` (``true`` or ``1``, as MLflow reads it)
``MLFLOW_TRACKING_SERVER_CERT_PATH``   ``tls.ca_bundle``: the CA bundle that verifies the server
``MLFLOW_TRACKING_CLIENT_CERT_PATH``   ``tls.client_cert``: a PEM with the client certificate and key
=====================================  ===========================================================
"""
from __future__ import annotations

import re
from typing import Mapping

from sync_gateway._redact import redact_url
from sync_gateway.errors import ConfigError
from sync_gateway.settings import AuthSettings, Settings

__all__ = ["settings_from_environ", "no_url_message"]


def settings_from_environ(settings: Settings, environ: Mapping[str, str]) -> Settings:
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        settings = settings.from_environ("MLFLOW_TRACKING_URI", {"server_url": uri})
    auth = AuthSettings(
        token_env="MLFLOW_TRACKING_TOKEN" if environ.get("MLFLOW_TRACKING_TOKEN") else None,
        username=environ.get("MLFLOW_TRACKING_USERNAME") or None,
        password_env="MLFLOW_TRACKING_PASSWORD" if environ.get("MLFLOW_TRACKING_PASSWORD") else None)
    if auth != AuthSettings():
        names = [n for n in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME") if environ.get(n)]
        settings = settings.from_environ(names[0], {"auth": auth})
    insecure = environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1")
    ca = environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if insecure and ca:  # MLflow's own client refuses the two together, too
        raise ConfigError("MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set: unset "
                          "one (the CA bundle verifies the server; insecure turns verification off)")
    if insecure:
        settings = settings.from_environ("MLFLOW_TRACKING_INSECURE_TLS", {"tls.insecure": True})
    if ca:
        settings = settings.from_environ("MLFLOW_TRACKING_SERVER_CERT_PATH", {"tls.ca_bundle": ca})
    cert = environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if cert:
        settings = settings.from_environ("MLFLOW_TRACKING_CLIENT_CERT_PATH", {"tls.client_cert": cert})
    return settings


def no_url_message(environ: Mapping[str, str]) -> str:
    """What to tell a user whose settings have no server URL."""
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if uri and not uri.startswith(("http://", "https://")):
        shown = re.sub(r"^[^/]*@", "***@", redact_url(uri) if "://" in uri else uri)  # no credentials
        return (f"no server URL: MLFLOW_TRACKING_URI is {shown!r}, "
                f"which is not an http:// or https:// tracking server "
                f"(a local store the gateway cannot sync to), so it is not used; set server.url in "
                f"the config (or HPCSYNC_SERVER_URL) to the MLflow server's URL")
    return "no server URL: set server.url in the config, HPCSYNC_SERVER_URL or MLFLOW_TRACKING_URI"
