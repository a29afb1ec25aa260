"""SLURM job decorators on top of submitit (``pip install 'hpc-sync[slurm]'``).

    from hpc.slurm import slurm_job

    @slurm_job(partition="gpu", nodes=1, tasks_per_node=4, gpus_per_node=4, timeout_min=120, project="resnet")
    def train(cfg):
        run = hpc.init(config=cfg)      # lands in project "resnet", grouped per job or array, one run per rank
        ...

    job = train.submit(cfg)             # one SLURM job: a submitit Job (job.result(), job.job_id)
    jobs = train.map_array(cfgs)        # a job array: one submitit Job per item
    job = train.local(cfg)              # the same code path without SLURM (submitit's local executor)
    train(cfg)                          # a plain call, here and now

Parameters are submitit's: its shared names (``timeout_min``, ``mem_gb``, ``nodes``, ``tasks_per_node``,
``gpus_per_node``, ``cpus_per_task``, ``name``, ``stderr_to_stdout``), the SLURM executor's names with or
without the ``slurm_`` prefix (``partition``, ``account``, ``signal_delay_s``, ``setup``, ...), ``folder``
(where submitit writes its pickles and logs, default ``./hpc-submitit/%j``) and ``max_num_timeout``; plus the
tracking names ``project``, ``group``, ``job_type``, ``tags`` and ``root``, which reach the job as
``HPCSYNC_*`` variables. A wrong name fails when the decorator is applied, listing the valid ones.

submitit's checkpoint hook keeps working: decorate a ``submitit.helpers.Checkpointable`` instance and its
``checkpoint`` method is what submitit calls on preemption or timeout before it requeues the job.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from . import _format as fmt
from ._settings import Settings
from .errors import JobWaitTimeout, UsageError

__all__ = ["slurm_job", "SlurmFunction", "result", "results", "valid_parameters", "TRACKING_PARAMETERS"]

TRACKING_PARAMETERS = ("project", "group", "job_type", "tags", "root")
_EXECUTOR_PARAMETERS = ("folder", "max_num_timeout")
_DEFAULT_FOLDER = os.path.join("hpc-submitit", "%j")
# Tracking parameter -> the environment variable hpc.init reads for it, named in one place (Settings).
_ENV = {name: Settings.env_var(name) for name in TRACKING_PARAMETERS}


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UsageError("hpc.slurm needs submitit: pip install 'hpc-sync[slurm]'") from None
    return submitit


# submitit's shared parameters as documented for 1.5, used when its own table cannot be read.
_SHARED_FALLBACK: Dict[str, Any] = {"name": str, "timeout_min": int, "mem_gb": float, "nodes": int,
                                    "cpus_per_task": int, "gpus_per_node": int, "tasks_per_node": int,
                                    "stderr_to_stdout": bool}


def _submitit_names() -> Tuple[Dict[str, Any], frozenset]:
    """(shared parameter -> expected type, SLURM executor parameter names), taken from submitit itself.

    The two tables come from submitit's private ``_typed_parameters``/``_valid_parameters`` (no public API
    lists them). If a submitit release drops or changes them, the shared names fall back to the documented
    table and ``slurm_*`` names are passed through for submitit to check itself (empty SLURM set)."""
    submitit = _submitit()
    try:
        from submitit.slurm.slurm import SlurmExecutor

        shared = dict(submitit.AutoExecutor._typed_parameters())
        slurm = frozenset(SlurmExecutor._valid_parameters())
        if shared and all(isinstance(k, str) and isinstance(t, type) for k, t in shared.items()):
            return shared, slurm
    except (ImportError, AttributeError, TypeError):
        pass
    return dict(_SHARED_FALLBACK), frozenset()


def valid_parameters() -> List[str]:
    """Every name ``slurm_job`` accepts, sorted."""
    shared, slurm = _submitit_names()
    names = set(shared) | set(slurm) | {"slurm_" + n for n in slurm | set(shared)}
    return sorted(names | set(TRACKING_PARAMETERS) | set(_EXECUTOR_PARAMETERS) | {"slurm_max_num_timeout"})


def _split(params: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """Sort ``params`` into (submitit update_parameters kwargs, executor kwargs, tracking values); raise on the rest."""
    shared, slurm = _submitit_names()
    submitit_params: Dict[str, Any] = {}
    executor: Dict[str, Any] = {}
    tracking: Dict[str, Any] = {}
    unknown = []
    for key, value in params.items():
        if key in TRACKING_PARAMETERS:
            tracking[key] = value
        elif key == "folder":
            executor["folder"] = value
        elif key in ("max_num_timeout", "slurm_max_num_timeout"):
            executor["slurm_max_num_timeout"] = value
        elif key in shared:
            submitit_params[key] = value
        elif key in slurm:
            submitit_params["slurm_" + key] = value  # AutoExecutor wants SLURM-only names prefixed
        elif key.startswith("slurm_") and (key[6:] in slurm or key[6:] in shared or not slurm):
            submitit_params[key] = value  # (not slurm: submitit's table is unreadable; it checks the name)
        else:
            unknown.append(key)
    if unknown:
        raise UsageError(f"slurm_job: unknown parameter(s) {', '.join(sorted(unknown))}. Valid parameters are: "
                         + ", ".join(valid_parameters()))
    for key, expected in shared.items():
        for name in (key, "slurm_" + key):
            value = submitit_params.get(name)
            allowed = (int, float) if expected is float else expected
            if value is not None and (not isinstance(value, allowed) or
                                      (expected is not bool and isinstance(value, bool))):
                raise UsageError(f"slurm_job: {name}={value!r} must be of type {expected.__name__}")
    return submitit_params, executor, _tracking_env(tracking)


def _tracking_env(tracking: Mapping[str, Any]) -> Dict[str, str]:
    env: Dict[str, str] = {}
    for key in ("project", "group", "job_type"):
        value = tracking.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"slurm_job: {key}={value!r} must be a non-empty string")
        if key == "project" and not fmt.is_name(value):
            raise UsageError(f"slurm_job: project {value!r} is not usable as a directory name: use 1 to 128 "
                             "letters, digits, '.', '_' or '-', starting with a letter or digit")
        env[_ENV[key]] = value
    tags = tracking.get("tags")
    if tags is not None:
        if isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags):
            raise UsageError(f"slurm_job: tags={tags!r} must be a list of non-empty strings")
        bad = [t for t in tags if "," in t]
        if bad:
            raise UsageError(f"slurm_job: tags {bad!r} contain ',' (HPCSYNC_TAGS is comma-separated)")
        env[_ENV["tags"]] = ",".join(tags)
    root = tracking.get("root")
    if root is not None:
        try:
            # Absolute now: the job may start in another directory than the one it was submitted from.
            env[_ENV["root"]] = os.path.abspath(os.fspath(root))
        except TypeError:
            raise UsageError(f"slurm_job: root={root!r} must be a path") from None
    return env


class _Tracked:
    """The callable submitit pickles: sets the tracking variables in the job, then calls the user's function.

    The variables are restored afterwards, which matters for submitit's in-process debug executor.
    """

    def __init__(self, function: Callable[..., Any], env: Mapping[str, str]):
        self.function = function
        self.env = dict(env)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        try:
            return self.function(*args, **kwargs)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def __repr__(self) -> str:
        return f"hpc.slurm tracked {self.function!r}"


class _TrackedCheckpointable(_Tracked):
    """A tracked function whose target has submitit's ``checkpoint`` hook (submitit looks for the attribute)."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        # _wrap chose this class because the target has a callable ``checkpoint``.
        delayed = self.function.checkpoint(*args, **kwargs)  # type: ignore[attr-defined]
        target = getattr(delayed, "function", None)
        if target is not None and not isinstance(target, _Tracked):
            delayed.function = _wrap(target, self.env)  # the requeued job keeps its tracking variables
        return delayed


def _wrap(function: Callable[..., Any], env: Mapping[str, str]) -> _Tracked:
    cls = _TrackedCheckpointable if callable(getattr(function, "checkpoint", None)) else _Tracked
    return cls(function, env)


class SlurmFunction:
    """A function decorated with :func:`slurm_job`: call it, or ``submit``/``map_array``/``local`` it."""

    def __init__(self, function: Callable[..., Any], params: Mapping[str, Any]):
        if not callable(function):
            raise UsageError(f"slurm_job decorates a callable, not {function!r}")
        self.function = function
        self.params = dict(params)
        self._submitit_params, self._executor_params, self._env = _split(self.params)
        self.__name__ = getattr(function, "__name__", type(function).__name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A plain call in this process: no submitit, no tracking variables."""
        return self.function(*args, **kwargs)

    def with_params(self, **params: Any) -> SlurmFunction:
        """A copy with some parameters changed (validated like the decorator's)."""
        return SlurmFunction(self.function, {**self.params, **params})

    @property
    def tracking_env(self) -> Dict[str, str]:
        """The ``HPCSYNC_*`` variables the job gets."""
        return dict(self._env)

    def executor(self, cluster: Optional[str] = None) -> Any:
        """A configured ``submitit.AutoExecutor`` (``cluster``: None = detect, "slurm", "local" or "debug")."""
        submitit = _submitit()
        folder = os.fspath(self._executor_params.get("folder") or _DEFAULT_FOLDER)
        extra = {k: v for k, v in self._executor_params.items() if k != "folder"}
        executor = submitit.AutoExecutor(folder=os.path.abspath(folder), cluster=cluster, **extra)
        params = dict(self._submitit_params)
        if executor.cluster != "slurm":
            # The SLURM-only names mean nothing to the local executors, which would warn about each one.
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if executor.cluster == "debug":
            params = {k: v for k, v in params.items() if k in ("timeout_min", "name")}
        executor.update_parameters(**params)
        return executor

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Submit one SLURM job running ``function(*args, **kwargs)``; returns the submitit Job."""
        return self.executor("slurm").submit(_wrap(self.function, self._env), *args, **kwargs)

    def map_array(self, *iterables: Iterable[Any]) -> List[Any]:
        """Submit a SLURM job array, one task per item (like ``map``); returns one submitit Job per task."""
        return self.executor("slurm").map_array(_wrap(self.function, self._env), *iterables)

    def local(self, *args: Any, debug: bool = False, **kwargs: Any) -> Any:
        """Run through submitit without SLURM: its local executor (a subprocess), or ``debug=True`` for its
        debug executor (in this process, debugger on error). Returns the submitit Job (``.result()``)."""
        executor = self.executor("debug" if debug else "local")
        return executor.submit(_wrap(self.function, self._env), *args, **kwargs)

    def __repr__(self) -> str:
        return f"<slurm_job {self.__name__} {self.params!r}>"


def slurm_job(function: Optional[Callable[..., Any]] = None, **params: Any) -> Any:
    """Decorate a function (or a ``submitit.helpers.Checkpointable``) to run as a SLURM job. See the module doc."""
    if function is not None:
        return SlurmFunction(function, params)
    _split(params)  # fail here, at decoration time, rather than at the first submit

    def decorate(target: Callable[..., Any]) -> SlurmFunction:
        return SlurmFunction(target, params)

    return decorate


def result(job: Any, timeout_s: float, poll_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> Any:
    """``job.result()`` with a bound: submitit's own ``result()`` waits forever (for example on a job that
    died without a result file while ``sacct`` cannot answer). Raises :class:`hpc.errors.JobWaitTimeout`."""
    _wait(job, timeout_s, poll_s, sleep, clock)
    return job.result()


def results(job: Any, timeout_s: float, poll_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> List[Any]:
    """``job.results()`` with a bound: one result per task of a multi-task job (``tasks_per_node > 1``)."""
    _wait(job, timeout_s, poll_s, sleep, clock)
    return job.results()


def _wait(job: Any, timeout_s: float, poll_s: float, sleep: Callable[[float], None],
          clock: Callable[[], float]) -> None:
    deadline = clock() + timeout_s
    while not job.done():
        if clock() >= deadline:
            raise JobWaitTimeout(str(job.job_id), timeout_s, str(getattr(job, "state", "unknown")))
        sleep(poll_s)
