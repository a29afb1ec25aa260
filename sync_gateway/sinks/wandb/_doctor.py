"""``sync-gateway doctor``'s checks of a W&B server: the URL answers GraphQL, the API key is accepted (the
``Viewer`` query, as ``wandb login`` checks it) and the entity is one the key may write to."""
from __future__ import annotations

from typing import Callable, List, Optional

from sync_gateway.errors import GatewayError
from sync_gateway.sinks.wandb._api import WandbApi

__all__ = ["wandb_doctor"]


def wandb_doctor(api: WandbApi, entity: Optional[str], add: Callable[[bool, str, str], None]) -> None:
    url = api.http.base_url
    try:
        viewer = api.viewer()
    except GatewayError as e:
        status = getattr(e, "status", None)
        if status in (401, 403):
            add(True, "server", f"{url} answers GraphQL")
            add(False, "auth", f"the W&B API key was refused (HTTP {status}): set server.api_key_file (mode 0600) "
                               f"or WANDB_API_KEY to a key from {url}/authorize")
        else:
            add(False, "server", f"{url}: {e}")
        return
    add(True, "server", f"{url} answers GraphQL")
    if not viewer or not viewer.get("username") and not viewer.get("entity"):
        add(False, "auth", "the server names no user for this API key: set server.api_key_file or WANDB_API_KEY")
        return
    add(True, "auth", f"the API key of {viewer.get('username') or viewer.get('entity')} ({api.http.auth_desc}) is "
                      f"accepted")
    teams: List[str] = [str(e.get("node", {}).get("name")) for e in (viewer.get("teams") or {}).get("edges", [])
                        if isinstance(e, dict)]
    known = [str(viewer.get("entity") or "")] + teams
    if not entity:
        add(bool(viewer.get("entity")), "entity", f"{viewer.get('entity')} (the key's default; set server.entity to "
                                                  f"write to a team)" if viewer.get("entity") else
            "no default entity for this key: set server.entity")
    elif entity in known:
        add(True, "entity", f"{entity} (the key's {'default' if entity == known[0] else 'team'})")
    else:
        add(False, "entity", f"server.entity {entity!r} is neither the key's user nor one of its teams "
                             f"({', '.join(k for k in known if k) or 'none'}): runs would be refused")
