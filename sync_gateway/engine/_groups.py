"""Groups after a pass: each group one of whose members changed is handed to the sink with every member
known (start, end, state, server run). Runs in the dispatching thread, after every run of the pass."""
from __future__ import annotations

import logging
from typing import Dict, List, Tuple

from sync_gateway._redact import redact
from sync_gateway.engine.state import GroupState, IndexEntry, StateStore
from sync_gateway.errors import GatewayError
from sync_gateway.sinks.base import GroupMember, GroupView, Sink

__all__ = ["sync_groups"]

log = logging.getLogger(__name__)


def sync_groups(sink: Sink, state: StateStore, index: Dict[str, IndexEntry], before: Dict[str, IndexEntry],
                errors: Dict[str, str]) -> None:
    """A pass over unchanged runs costs nothing here. One group's failure goes to ``errors`` and stays in
    that group."""
    touched = {e.group for k, e in index.items() if e.group and e != before.get(k)}
    members: Dict[Tuple[str, str], List[GroupMember]] = {}
    for key, ent in sorted(index.items()):
        if ent.group not in touched or not ent.state:
            continue
        st = state.load(key)
        if st.sink_kind != sink.kind or not st.sink:
            continue
        members.setdefault(ent.group, []).append(GroupMember(
            key, ent.state, ent.start_ms, ent.end_ms, sink.restore(st.sink)))
    for (project, group), ms in sorted(members.items()):
        gst = state.load_group(project, group)
        try:
            new = sink.sync_group(GroupView(project, group, tuple(ms)), gst.sink or None)
        except Exception as e:  # noqa: BLE001 - one group's failure stays in that group
            msg = redact(e if isinstance(e, GatewayError) else f"{e.__class__.__name__}: {e}")
            log.error("group %s/%s: %s", project, group, msg)
            errors[f"group:{project}/{group}"] = msg
            continue
        if new != gst.sink:
            state.save_group(GroupState(project, group, new))
