"""Sinks: one per tracking-server kind, selected by ``server.kind``. Each owns its server's rules.

The registry maps a kind to ``module:Class``; a sink's module is imported only when it is used (the
MLflow sink needs ``requests``, the ``[gateway]`` extra).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Type

from sync_gateway.errors import ConfigError
from sync_gateway.sinks.base import Sink

if TYPE_CHECKING:
    from sync_gateway.settings import Settings

__all__ = ["KINDS", "sink_class", "make_sink", "Sink"]

_REGISTRY: Dict[str, str] = {"mlflow": "sync_gateway.sinks.mlflow.sink:MlflowSink",
                             "wandb": "sync_gateway.sinks.wandb.sink:WandbSink"}
#: every valid ``server.kind``
KINDS = tuple(_REGISTRY)


def sink_class(kind: str) -> Type[Sink]:
    if kind not in _REGISTRY:
        raise ConfigError(f"server.kind {kind!r} is not supported; valid kinds are: {', '.join(KINDS)}")
    module, name = _REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def make_sink(settings: Settings, environ: Optional[Mapping[str, str]] = None, **kw: Any) -> Sink:
    """The sink for ``settings.server_kind``, built from the settings (``kw`` goes to its constructor)."""
    return sink_class(settings.server_kind).from_settings(settings, environ, **kw)
