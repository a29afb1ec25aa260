"""Sinks: one per tracking-server kind, selected by ``server.kind``. Each owns its server's rules.

The registry maps a kind to ``module:Class``; a sink's module is imported only when it is used (the
MLflow sink needs ``requests``, the ``[gateway]`` extra).

:func:`configure` completes resolved :class:`~sync_gateway.settings.Settings` with what belongs to the sink of
their ``server.kind``: its own environment variables (at the environment's rank, below the config file) and
the check of its keys. :func:`make_sink` calls it; so does the CLI right after ``Settings.resolve``, so that
every command sees the same settings.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Mapping, Optional, Type

from sync_gateway.errors import ConfigError
from sync_gateway.settings import Settings
from sync_gateway.sinks.base import Sink

__all__ = ["KINDS", "sink_class", "configure", "make_sink", "Sink"]

_REGISTRY: Dict[str, str] = {"mlflow": "sync_gateway.sinks.mlflow.sink:MlflowSink",
                             "wandb": "sync_gateway.sinks.wandb.sink:WandbSink"}
#: every valid ``server.kind``
KINDS = tuple(_REGISTRY)


def sink_class(kind: str) -> Type[Sink]:
    if kind not in _REGISTRY:
        raise ConfigError(f"server.kind {kind!r} is not supported; valid kinds are: {', '.join(KINDS)}")
    module, name = _REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def configure(settings: Settings, environ: Optional[Mapping[str, str]] = None) -> Settings:
    """``settings`` with the sink's own environment variables applied (:meth:`Sink.settings_from_environ`,
    never over the config file or an argument), checked by the sink (:meth:`Sink.validate`). Applying it
    twice changes nothing."""
    sink = sink_class(settings.server_kind)
    settings = sink.settings_from_environ(settings, os.environ if environ is None else environ)
    sink.validate(settings)
    return settings


def make_sink(settings: Settings, environ: Optional[Mapping[str, str]] = None, **kw: Any) -> Sink:
    """The sink for ``settings.server_kind``, built from the settings completed by :func:`configure`
    (``kw`` goes to its constructor)."""
    environ = os.environ if environ is None else environ
    return sink_class(settings.server_kind).from_settings(configure(settings, environ), environ, **kw)
