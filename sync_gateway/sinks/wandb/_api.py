"""W&B's wire, as the official client (wandb 0.31's Go core) speaks it: GraphQL at ``<url>/graphql`` with HTTP
Basic auth (user ``api``, the API key as password), ``file_stream`` posts, and uploads PUT to the URLs that
``CreateRunFiles`` answers, without credentials (on W&B they are signed storage URLs).

The queries are the official client's own text (read from wandb-core 0.31.0), so a W&B server answers them as
it answers that client. Errors become the package's error tree: 429 and 5xx are retried by the HTTP client
(``Retry-After`` honoured, the identical body re-sent) and then raised as ServerUnavailable; 401/403/404 and
GraphQL errors are ServerRefused.

Rate limits (W&B's documented ones: 2 file_stream requests/s per run, 500/s per project): every file_stream
post waits for its run's slot and a token of its project's budget (:class:`RateLimiter`), so ``workers: N``
runs of one project stay under the project's limit together.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional

import requests

from sync_gateway._redact import redact, register_secret
from sync_gateway.errors import FileTooLarge, ServerError, ServerRefused, ServerUnavailable, ServerUnreachable
from sync_gateway.sinks._http import DeadlineExceeded, HttpClient

__all__ = ["WandbApi", "RateLimiter", "upload_headers", "UPSERT_BUCKET", "CREATE_RUN_FILES", "VIEWER",
           "RUN_RESUME_STATUS"]

UPSERT_BUCKET = """mutation UpsertBucket ($id: String, $name: String, $project: String, $entity: String, \
$groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, \
$config: JSONString, $host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, \
$state: String, $sweep: String, $tags: [String!], $summaryMetrics: JSONString) {
	upsertBucket(input: {id:$id,name:$name,groupName:$groupName,modelName:$project,entityName:$entity,\
description:$description,displayName:$displayName,notes:$notes,config:$config,commit:$commit,host:$host,\
debug:$debug,jobProgram:$program,jobRepo:$repo,jobType:$jobType,state:$state,sweep:$sweep,tags:$tags,\
summaryMetrics:$summaryMetrics}) {
		bucket {
			id
			name
			displayName
			description
			config
			sweepName
			project {
				id
				name
				entity {
					id
					name
				}
			}
			historyLineCount
		}
		inserted
	}
}
"""

CREATE_RUN_FILES = """mutation CreateRunFiles ($entity: String!, $project: String!, $run: String!, $files: [String!]!) {
	createRunFiles(input: {entityName:$entity,projectName:$project,runName:$run,files:$files}) {
		runID
		uploadHeaders
		files {
			name
			uploadUrl
		}
	}
}
"""

VIEWER = """query Viewer {
	viewer {
		id
		entity
		username
		email
		flags
		teams {
			edges {
				node {
					name
				}
			}
		}
	}
}
"""

RUN_RESUME_STATUS = """query RunResumeStatus ($project: String, $entity: String, $name: String!) {
	model(name: $project, entityName: $entity) {
		id
		name
		entity {
			id
			name
		}
		bucket(name: $name, missingOk: true) {
			id
			name
			summaryMetrics
			displayName
			logLineCount
			historyLineCount
			eventsLineCount
			historyTail
			eventsTail
			config
			tags
			notes
			wandbConfig(keys: ["t"])
		}
	}
}
"""


class RateLimiter:
    """At most ``run_per_s`` requests per run and ``project_per_s`` per project, from all threads of this
    process together. ``sleep`` and ``clock`` are injected for tests."""

    def __init__(self, run_per_s: float, project_per_s: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.run_gap_s = 1.0 / run_per_s if run_per_s > 0 else 0.0
        self.project_gap_s = 1.0 / project_per_s if project_per_s > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next_run: Dict[str, float] = {}
        self._next_project: Dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, project: str, run: str) -> float:
        """Reserve the next slot of ``run`` and of ``project`` and sleep until it; returns the seconds slept."""
        with self._lock:
            now = self.clock()
            at = max(now, self._next_run.get(run, 0.0), self._next_project.get(project, 0.0))
            self._next_run[run] = at + self.run_gap_s
            self._next_project[project] = at + self.project_gap_s
        delay = at - now
        if delay > 0:
            self.sleep(delay)
        return max(0.0, delay)


class WandbApi:
    """One W&B server: ``http`` carries the API key (Basic ``api:<key>``), ``uploads`` carries none."""

    def __init__(self, http: HttpClient, uploads: HttpClient, api_key: Optional[str], limiter: RateLimiter):
        self.http, self.uploads, self.limiter = http, uploads, limiter
        if api_key:
            register_secret(api_key)
            http.auth = requests.auth.HTTPBasicAuth("api", api_key)
            http.auth_desc = "the W&B API key (user api)"
        uploads.auth = None
        self.requests = 0    # requests sent (retries by the HTTP client not counted), for figures and tests

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, http: HttpClient, method: str, url: str, what: str, **kw: Any) -> requests.Response:
        self.requests += 1
        try:
            r = http.request(method, url, **kw)
        except DeadlineExceeded as e:
            raise ServerUnavailable(f"{what}: {self.http.base_url} sent {e}") from e
        except requests.exceptions.SSLError as e:
            raise ServerRefused(f"TLS: cannot verify {http.base_url} with the CAs from {http.tls.source} "
                                f"({str(e)[:200]}); set tls.ca_bundle to the server CA's PEM file") from e
        except requests.exceptions.RequestException as e:
            raise ServerUnreachable(f"{what}: cannot reach {self.http.base_url} (after {http.retries} retries): "
                                    f"{redact(str(e))[:300]}") from e
        if r.status_code >= 400:
            body = redact(r.text[:300])
            if r.status_code == 429 or r.status_code >= 500:
                raise ServerUnavailable(f"{what} -> HTTP {r.status_code} {body}", r.status_code)
            hint = ""
            if r.status_code in (401, 403):
                hint = " (check server.api_key_file or WANDB_API_KEY, and that the key may write to server.entity)"
            elif r.status_code == 404:
                hint = " (check server.entity and the project)"
            raise ServerRefused(f"{what} -> HTTP {r.status_code} {body}{hint}", r.status_code)
        return r

    def graphql(self, query: str, variables: Mapping[str, Any]) -> Dict[str, Any]:
        name = query.split("(", 1)[0].split("{", 1)[0].split()[-1]
        r = self._send(self.http, "POST", "/graphql", f"GraphQL {name}",
                       json={"query": query, "variables": dict(variables), "operationName": name})
        try:
            doc = r.json()
        except ValueError as e:
            raise ServerRefused(f"GraphQL {name}: the answer is not JSON ({r.text[:200]!r}): is server.url a W&B "
                                f"server?", r.status_code) from e
        if doc.get("errors"):
            msg = "; ".join(str(e.get("message", e))[:300] for e in doc["errors"][:3] if isinstance(e, dict))
            raise ServerRefused(f"GraphQL {name}: {redact(msg)}", r.status_code)
        return doc.get("data") or {}

    # -- operations ---------------------------------------------------------------------------
    def upsert_bucket(self, **variables: Any) -> Dict[str, Any]:
        """Create or update a run (``name`` = the run id); variables left out or None are left as they are."""
        data = self.graphql(UPSERT_BUCKET, {k: v for k, v in variables.items() if v is not None})
        return (data.get("upsertBucket") or {}).get("bucket") or {}

    def viewer(self) -> Dict[str, Any]:
        return self.graphql(VIEWER, {}).get("viewer") or {}

    def resume_status(self, entity: str, project: str, name: str) -> Optional[Dict[str, Any]]:
        """The run's bucket (None when there is none), as the official client asks it before resuming."""
        data = self.graphql(RUN_RESUME_STATUS, {"entity": entity, "project": project, "name": name})
        return (data.get("model") or {}).get("bucket")

    def file_stream(self, entity: str, project: str, run: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """One file_stream post (rate-limited); the same body may be sent again: offsets place its lines."""
        self.limiter.wait(f"{entity}/{project}", f"{entity}/{project}/{run}")
        data = json.dumps(body, allow_nan=True, default=str, separators=(",", ":"))
        r = self._send(self.http, "POST", f"/files/{entity}/{project}/{run}/file_stream", "file_stream",
                       data=data.encode(), headers={"Content-Type": "application/json"})
        try:
            return r.json() if r.content else {}
        except ValueError:
            return {}

    def create_run_files(self, entity: str, project: str, run: str, names: List[str]) -> Dict[str, Any]:
        data = self.graphql(CREATE_RUN_FILES, {"entity": entity, "project": project, "run": run, "files": names})
        return data.get("createRunFiles") or {}

    def put(self, url: str, headers: Mapping[str, str], body: BinaryIO, size_bytes: int) -> None:
        """PUT a file's bytes to its upload URL, streamed, without the API key."""
        hdrs = {"Content-Type": "application/octet-stream", "Content-Length": str(size_bytes), **headers}
        try:
            self._send(self.uploads, "PUT", url, "upload", data=body, headers=hdrs,
                       deadline_s=self.uploads.deadline_s + size_bytes / 1e6)
        except ServerError as e:
            if e.status == 413:
                raise FileTooLarge(f"{url.split('?')[0]}: {size_bytes / 1e6:,.1f} MB refused as too large (HTTP 413) "
                                   f"by the storage or a proxy before it", 413) from e
            raise


def upload_headers(raw: Any) -> Dict[str, str]:
    """CreateRunFiles' ``uploadHeaders`` (``["Name:value", ...]``) as a dict."""
    out: Dict[str, str] = {}
    for h in raw or []:
        if isinstance(h, str) and ":" in h:
            k, v = h.split(":", 1)
            out[k.strip()] = v.strip()
    return out
