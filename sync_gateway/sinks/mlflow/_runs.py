"""One hpc run is one MLflow run: experiments, finding a run again by its tag, creating it exactly once,
converging after two gateways raced to create it, retiring a rewritten run. Used by ``MlflowSink``.

``runs/create`` is not idempotent, so it is never retried blindly: after a lost or refused answer (a 5xx,
429, a read timeout, a cut-off answer) the runs are searched by the tag first, and only when that proves
nothing was created is the create sent again (at most ``retries`` more times, honouring ``Retry-After``,
within ``request_deadline_s``). A create that the server finishes after the search said nothing is the
race case: both runs carry the tag, and every gateway that sees them keeps the same one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from sync_gateway.errors import RunDeleted, ServerError, ServerUnavailable, ServerUnreachable
from sync_gateway.sinks.base import SinkRun
from sync_gateway.sinks.mlflow._names import tag_value
from sync_gateway.sinks.mlflow._rest import DUPLICATE_TAG, SYNC_TAG, MlflowRest, ServerBusy

__all__ = ["MlflowRun", "Runs", "EXPERIMENT_KIND", "RETIRED_TAG", "SETTLE_S", "LIST_AFTER", "now_ms", "tags_digest"]

log = logging.getLogger(__name__)

#: MLflow 3 opens a new experiment on its GenAI view unless this experiment tag says otherwise.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
RETIRED_TAG = "hpc.retired"          # on a run whose files were rewritten from scratch: why
#: a server run is checked for duplicates until a check this long after adopting it found none
SETTLE_S = 60.0
#: runs looked up in one experiment in one pass, one search each; beyond, the experiment's synced runs are
#: listed once (a first pass over 2,000 new runs: one listing instead of 2,000 searches) ...
LIST_AFTER = 16
LIST_PAGE = 1000                     # runs per page of that listing
LIST_PAGES = 10                      # ... unless it has more pages than this: then one search per run again
BACKOFF_MAX_S = 30.0                 # between two creates of one run (like the HTTP layer's retries)


@dataclass
class MlflowRun(SinkRun):
    run_id: str
    experiment_id: str
    artifact_uri: str = ""
    params: Dict[str, str] = field(default_factory=dict)     # what the server holds (params are immutable)
    refused_params: List[str] = field(default_factory=list)  # config keys whose change MLflow refused
    skipped_values: int = 0                                  # logged values that are not metrics (strings)
    unstorable_points: int = 0     # points MLflow cannot store (step/timestamp/value out of its range)
    refused_points: int = 0        # held points the server refused for good (``_held.flush``)
    adopted_ms: int = 0            # when this gateway created or found the run (its clock)
    settled: bool = False          # a check SETTLE_S after adoption found no duplicate
    created_tags: str = ""         # digest of the tags runs/create carried (this gateway created the run)
    #: params, tags and points not sent yet, to ride with the run's next log-batch (``_held``): kept in the
    #: state, so a stop before they were sent sends them on the next pass
    held: Dict[str, Any] = field(default_factory=dict)
    logged_images: bool = False    # the tag mlflow.loggedImages is set
    tables: List[str] = field(default_factory=list)  # the paths listed in the tag mlflow.loggedArtifacts
    tables_left_out: int = 0       # tables beyond what that tag holds (MLflow's 8000 characters)
    tag: str = ""                  # the sync id its hpc.run_id tag carries ("": saved before root ids)

    def to_state(self) -> Dict[str, Any]:
        return asdict(self)


def now_ms() -> int:
    return int(time.time() * 1000)


def tags_digest(tags: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(tags.items())).encode("utf-8")).hexdigest()[:32]


def _info(r: Dict[str, Any]) -> Dict[str, Any]:
    """A run of a runs/search answer: its ``info``, with its tags as ``tags``."""
    info = dict(r["info"])
    info["tags"] = {t["key"]: t.get("value", "") for t in (r.get("data") or {}).get("tags", [])}
    return info


class Runs:
    """Server runs by sync id, over one :class:`MlflowRest`; safe for the threads of a pass."""

    def __init__(self, rest: MlflowRest, sleep: Callable[[float], None] = time.sleep):
        self.rest = rest
        self.sleep = sleep
        self._experiments: Dict[str, str] = {}
        self._experiment_lock = threading.Lock()  # an experiment is looked up or created by one thread at a time
        self._lookups: Dict[str, int] = {}        # experiment -> runs looked up in this pass
        #: experiment -> sync id -> the runs carrying it (None: search for it); None: too many to list
        self._listing: Dict[str, Optional[Dict[str, Optional[List[Dict[str, Any]]]]]] = {}
        self._listing_lock = threading.Lock()
        self._unlisted: set = set()  # experiments with more synced runs than LIST_PAGES hold: never listed again

    def new_pass(self) -> None:
        """Forget the listings: what another gateway or a user did since shows in the next pass."""
        with self._listing_lock:
            self._lookups.clear()
            self._listing.clear()

    # -- experiments ----------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        eid = self._experiments.get(name)  # known: no lock (a lookup of another one may be in flight)
        if eid is not None:
            return eid
        with self._experiment_lock:
            if name not in self._experiments:
                self._experiments[name] = self._find_or_create_experiment(name)
            return self._experiments[name]

    def _get_experiment(self, name: str) -> str:
        return self.rest.call("GET", "/experiments/get-by-name", params={"experiment_name": name})["experiment"][
            "experiment_id"]

    def _find_or_create_experiment(self, name: str) -> str:
        try:
            return self._get_experiment(name)
        except ServerError as e:
            if e.status != 404:
                raise
        try:
            return self.rest.call("POST", "/experiments/create", {
                "name": name, "tags": [{"key": EXPERIMENT_KIND[0], "value": EXPERIMENT_KIND[1]}]})["experiment_id"]
        except ServerError as e:  # another gateway created it meanwhile
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._get_experiment(name)

    # -- finding a run again -------------------------------------------------------------------------
    def tagged(self, experiment_id: str, sync_id: str) -> List[Dict[str, Any]]:
        """Every run (deleted ones too) carrying the sync tag ``sync_id``: their ``info`` and tags."""
        quoted = sync_id.replace("\\", "\\\\").replace("'", "\\'")
        res = self.rest.call("POST", "/runs/search", {"experiment_ids": [experiment_id], "max_results": 100,
                                                      "run_view_type": "ALL",
                                                      "filter": f"tags.`{SYNC_TAG}` = '{quoted}'"})
        return [_info(r) for r in res.get("runs") or []]

    def _listed(self, experiment_id: str, sync_id: str) -> Optional[List[Dict[str, Any]]]:
        """The runs carrying ``sync_id`` from this pass's listing of the experiment; None: search for it."""
        with self._listing_lock:
            n = self._lookups[experiment_id] = self._lookups.get(experiment_id, 0) + 1
            if n <= LIST_AFTER:
                return None
            if experiment_id in self._unlisted:
                return None
            if experiment_id not in self._listing:
                self._listing[experiment_id] = self._list(experiment_id)
                if self._listing[experiment_id] is None:
                    self._unlisted.add(experiment_id)
            listing = self._listing[experiment_id]
            if listing is None:
                return None
            found = listing.get(sync_id, [])
            listing[sync_id] = None  # looked up once: a later lookup (after a create, a retire) searches
            return found

    def _listed_too(self, experiment_id: str, sync_id: str) -> Optional[List[Dict[str, Any]]]:
        """The runs carrying ``sync_id`` from this pass's listing, if the experiment has one already (the
        legacy lookup right after :meth:`lookup` costs no request of its own then); None: search for it."""
        with self._listing_lock:
            listing = self._listing.get(experiment_id)
            if listing is None or listing.get(sync_id, []) is None:
                return None
            found = listing.get(sync_id) or []
            listing[sync_id] = None
            return found

    def _list(self, experiment_id: str) -> Optional[Dict[str, Optional[List[Dict[str, Any]]]]]:
        out: Dict[str, Optional[List[Dict[str, Any]]]] = {}
        token = None
        for _ in range(LIST_PAGES):
            body: Dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": LIST_PAGE,
                                    "run_view_type": "ALL", "filter": f"tags.`{SYNC_TAG}` LIKE '%'"}
            if token:
                body["page_token"] = token
            res = self.rest.call("POST", "/runs/search", body)
            for r in res.get("runs") or []:
                info = _info(r)
                found = out.setdefault(info["tags"].get(SYNC_TAG, ""), [])
                if found is not None:
                    found.append(info)
            token = res.get("next_page_token")
            if not token:
                return out
        return None

    def converge(self, experiment_id: str, sync_id: str, found: List[Dict[str, Any]]) -> Optional[MlflowRun]:
        """The one run of ``sync_id`` among ``found``: the active run with the smallest run id (a total
        order every gateway computes alike); the other active ones are marked as its duplicates."""
        active = sorted((r for r in found if r.get("lifecycle_stage", "active") == "active"),
                        key=lambda r: r["run_id"])
        if not active:
            return None
        win = active[0]
        for loser in active[1:]:
            log.warning("%s: MLflow runs %s and %s both carry %s=%s (two gateways raced to create it): "
                        "keeping %s, marking %s as its duplicate", sync_id, win["run_id"], loser["run_id"],
                        SYNC_TAG, sync_id, win["run_id"], loser["run_id"])
            self._mark_duplicate(loser["run_id"], win["run_id"], sync_id)
        return MlflowRun(win["run_id"], experiment_id, win.get("artifact_uri", ""))

    def _mark_duplicate(self, run_id: str, winner: str, sync_id: str) -> None:
        try:
            self.rest.set_tags(run_id, {DUPLICATE_TAG: winner, SYNC_TAG: f"duplicate:{sync_id}"})
            self.rest.call("POST", "/runs/delete", {"run_id": run_id})  # to the trash; the winner gets it all
        except RunDeleted:
            pass  # another gateway marked it first

    def lookup(self, experiment_id: str, sync_id: str) -> Optional[MlflowRun]:
        """:meth:`find`, from this pass's listing of the experiment when there is one (:data:`LIST_AFTER`)."""
        found = self._listed(experiment_id, sync_id)
        return self.find(experiment_id, sync_id) if found is None else self._resolve(experiment_id, sync_id, found)

    def find(self, experiment_id: str, sync_id: str) -> Optional[MlflowRun]:
        """The server run of ``sync_id``, None if there is none; raises RunDeleted when a user deleted it."""
        return self._resolve(experiment_id, sync_id, self.tagged(experiment_id, sync_id))

    def _resolve(self, experiment_id: str, sync_id: str, found: List[Dict[str, Any]]) -> Optional[MlflowRun]:
        run = self.converge(experiment_id, sync_id, found)
        if run is None and any(not r["tags"].get(DUPLICATE_TAG) for r in found):
            raise RunDeleted(f"the MLflow run of {sync_id} was deleted on the server: it is not synced "
                             f"(restore it from the MLflow trash to sync it again)")
        return run

    def check_duplicates(self, sync_id: str, run: MlflowRun) -> None:
        """A run created in a race may have a twin that another gateway created at the same moment: look
        until a look at least SETTLE_S after adopting the run found none."""
        win = self.converge(run.experiment_id, sync_id, self.tagged(run.experiment_id, sync_id))
        if win is None or win.run_id == run.run_id:
            run.settled = now_ms() - run.adopted_ms >= SETTLE_S * 1000
            return
        # Ours lost (marked just now, or by the other gateway): move to the winner, send everything again.
        reason = (f"another gateway created the same run at the same moment (MLflow run {win.run_id}) and won "
                  f"the race: syncing into {win.run_id} now; this gateway's {run.run_id} is marked "
                  f"{DUPLICATE_TAG}={win.run_id}")
        run.__dict__.update(MlflowRun(win.run_id, run.experiment_id, win.artifact_uri, adopted_ms=now_ms(),
                                      tag=sync_id).__dict__)
        run.replaced = reason

    # -- creating one -------------------------------------------------------------------------------
    def adopt_legacy(self, eid: str, sync_id: str, legacy: str, start_ms: Optional[int]) -> Optional[MlflowRun]:
        """The run an older gateway tagged ``legacy`` (``<project>/<run_id>``, before root ids), moved to
        ``sync_id``; only one that started when this run did (``start_ms``): another root's run of the same
        project/run id, synced by a gateway that has not moved it yet, is never taken."""
        listed = self._listed_too(eid, legacy)
        found = [r for r in (self.tagged(eid, legacy) if listed is None else listed)
                 if start_ms is None or int(r.get("start_time") or -1) == start_ms]
        run = self.converge(eid, legacy, found)
        if run is None:
            if any(not r["tags"].get(DUPLICATE_TAG) for r in found):
                raise RunDeleted(f"the MLflow run of {sync_id} (tagged {legacy} by an older gateway) was deleted on "
                                 f"the server: it is not synced (restore it from the MLflow trash to sync it again)")
            return None
        self.retag(run, sync_id)
        run.adopted_legacy = True
        log.info("%s: adopted MLflow run %s, tagged %s by an older gateway", sync_id, run.run_id, legacy)
        return run

    def retag(self, run: MlflowRun, sync_id: str) -> None:
        """Point the run's sync tag at ``sync_id`` (a run an older gateway tagged with its legacy id)."""
        self.rest.set_tags(run.run_id, {SYNC_TAG: sync_id})
        run.tag = sync_id

    def find_or_create(self, project: str, sync_id: str, name: str, start_ms: Optional[int],
                       tags: Mapping[str, str], user_id: Optional[str] = None,
                       legacy: Optional[str] = None) -> MlflowRun:
        eid = self.experiment_id(project)
        run = self.lookup(eid, sync_id)
        if run is None and legacy:
            run = self.adopt_legacy(eid, sync_id, legacy, start_ms)
        if run is None:
            body: Dict[str, Any] = {"experiment_id": eid, "run_name": name,
                                    "tags": [{"key": k, "value": v} for k, v in {**tags, SYNC_TAG: sync_id}.items()]}
            if start_ms is not None:
                body["start_time"] = start_ms
            if user_id:  # the run's user, as MLflow's own client sends it
                body["user_id"] = user_id
            run = self._create(eid, sync_id, body)
            run.created_tags = tags_digest(tags)
        run.adopted_ms, run.tag = now_ms(), sync_id
        return run

    def _create(self, eid: str, sync_id: str, body: Dict[str, Any]) -> MlflowRun:
        """``runs/create``, sent again only while a search by the tag proves the last one created nothing."""
        deadline = time.monotonic() + self.rest.http.deadline_s
        for attempt in range(self.rest.http.retries + 1):
            try:
                info = self.rest.call("POST", "/runs/create", body, idempotent=False)["run"]["info"]
                break
            except ServerUnreachable:
                raise  # nothing reached the server (the HTTP layer retried the connection): the pass ends
            except ServerUnavailable as e:
                again = self.find(eid, sync_id)
                if again is not None:
                    log.info("%s: the answer to runs/create was lost; found the run it created by its tag", sync_id)
                    return again
                wait_s = e.retry_after_s if isinstance(e, ServerBusy) and e.retry_after_s is not None \
                    else min(BACKOFF_MAX_S, self.rest.http.backoff_factor * 2 ** attempt)
                if attempt == self.rest.http.retries or time.monotonic() + wait_s > deadline:
                    raise
                log.info("%s: runs/create failed (%s) and created nothing; trying again in %.1f s", sync_id, e, wait_s)
                self.sleep(wait_s)
        # Another gateway may have raced us between search and create: converge at once on the winner.
        return self.converge(eid, sync_id, self.tagged(eid, sync_id)) or \
            MlflowRun(info["run_id"], eid, info.get("artifact_uri", ""))

    def retire(self, run: MlflowRun, reason: str) -> None:  # (a later lookup searches: _listed)
        """Detach ``run`` from its sync id (its tag becomes ``retired:...``), keeping what it holds."""
        try:
            cur = self.rest.get_run(run.run_id)
            tags = {t["key"]: t.get("value", "") for t in cur.get("data", {}).get("tags", [])}
            sync_id = tags.get(SYNC_TAG, "")
            if sync_id.startswith("retired:"):
                return
            name = tags.get("mlflow.runName") or cur["info"].get("run_name", "")
            self.rest.set_tags(run.run_id, {SYNC_TAG: f"retired:{now_ms()}:{sync_id}", RETIRED_TAG: tag_value(reason),
                                            "mlflow.runName": tag_value(f"{name} (replaced)")})
        except RunDeleted:
            pass  # deleted by a user: nothing to detach
