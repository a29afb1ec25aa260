"""``hpc.init``: resolve settings, pick or create the run directory, resume it, start the Run."""
from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import _format as fmt
from . import _run, _signals
from ._context import RunContext, detect
from ._monitor_control import start_monitor
from ._names import random_id, random_name
from ._run import DisabledRun, Run, _set_module_globals
from ._settings import Settings
from ._stream import Stream
from ._terminal import Terminal
from ._values import plain_config
from ._wandb import WandbSettings, wandb_settings
from .errors import ResumeError, UsageError

__all__ = ["init", "prepare_run_dir", "Prepared", "check_name", "check_resume", "load_summary_state"]


def _new_meta(settings: Settings, run_id: str, name: str, group: Optional[str], job_type: Optional[str],
              tags: List[str], notes: str, context: RunContext) -> Dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "format_version": fmt.FORMAT_VERSION, "id": run_id, "name": name, "project": settings.project,
        "group": group, "job_type": job_type, "tags": tags, "notes": notes, "created_ms": now_ms,
        "attempt": 0, "attempts": [], "user": _user(), "host": socket.gethostname(),
        "program": _program(),
        "argv": list(sys.argv), "python": platform.python_version(), "cwd": os.getcwd(),
        "git": None, "slurm": context.metadata, "metrics": [],
        "settings": {"flush_interval_s": settings.flush_interval_s,
                     "heartbeat_interval_s": settings.heartbeat_interval_s},
    }


def _program() -> Optional[str]:
    first = sys.argv[0] if sys.argv else ""
    return os.path.abspath(first) if first and first not in ("-", "-c") else None


def _user() -> Optional[str]:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def check_name(kind: str, value: str) -> None:
    if not fmt.is_name(value):
        raise UsageError(f"{kind} {value!r} is not usable as a directory name: use 1 to 128 letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")


# W&B modes that mean "record": hpc always records offline and the gateway syncs.
_WANDB_MODES = {"online": "offline", "shared": "offline", "run": "offline"}
_WANDB_ONLY = ("entity", "config_exclude_keys", "config_include_keys", "allow_val_change", "force", "anonymous",
               "reinit", "resume_from", "fork_from", "save_code", "tensorboard", "sync_tensorboard",
               "monitor_gym")


def init(project: Optional[str] = None, name: Optional[str] = None, group: Optional[str] = None,
         job_type: Optional[str] = None, config: Optional[Mapping] = None, tags: Optional[List[str]] = None,
         notes: Optional[str] = None, id: Optional[str] = None, resume: Any = None,
         dir: Optional[str] = None, mode: Optional[str] = None, settings: Any = None, *,
         entity: Optional[str] = None, config_exclude_keys: Optional[List[str]] = None,
         config_include_keys: Optional[List[str]] = None, allow_val_change: Optional[bool] = None,
         force: Optional[bool] = None, anonymous: Optional[str] = None, reinit: Any = None,
         resume_from: Optional[str] = None, fork_from: Optional[str] = None, save_code: Optional[bool] = None,
         tensorboard: Optional[bool] = None, sync_tensorboard: Optional[bool] = None,
         monitor_gym: Optional[bool] = None, **unknown: Any) -> Union[Run, DisabledRun]:
    """Start (or resume) a run written offline under ``<root>/<project>/<id>/``. See docs/sdk.md.

    W&B's whole signature is accepted (docs/coming-from-wandb.md): ``dir=`` is where the run's files go
    unless ``HPCSYNC_DIR`` says otherwise; ``reinit="return_previous"`` (or False) returns the active run;
    the arguments hpc has no use for (``entity``, ``save_code``, ...) are recorded in run.json's ``wandb``."""
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise UsageError("tags must be a list of strings")
    wandb_args = {k: v for k, v in zip(_WANDB_ONLY, (
        entity, config_exclude_keys, config_include_keys, allow_val_change, force, anonymous, reinit,
        resume_from, fork_from, save_code, tensorboard, sync_tensorboard, monitor_gym)) if v is not None}
    if unknown:
        Terminal(False).warn(f"init() ignores the unknown argument(s) {', '.join(sorted(unknown))} (recorded "
                             "in run.json)")
        wandb_args.update(unknown)
    explicit: Dict[str, Any] = {}
    if isinstance(settings, WandbSettings):
        explicit, implied, ignored = wandb_settings(settings)
        name, notes, dir = name or implied.get("name"), notes or implied.get("notes"), dir or implied.get("dir")
        if ignored:
            wandb_args["settings"] = ignored
    elif settings is not None:
        explicit = dict(settings)
    resolved = _resolve(explicit, wandb_args, project=project, group=group, run_id=id, resume=resume,
                        job_type=job_type, tags=tags, mode=mode, dir=dir)
    terminal = Terminal(resolved.silent)
    if config is not None and not isinstance(config, Mapping):
        raise UsageError(f"config must be a dict, got {type(config).__name__}")
    if config is not None and (config_include_keys or config_exclude_keys):
        config = {k: v for k, v in config.items() if (not config_include_keys or k in config_include_keys)
                  and k not in (config_exclude_keys or ())}
    job_type = resolved.job_type
    tags = list(resolved.tags) if resolved.tags is not None else None

    previous = _previous_run(reinit, terminal)
    if previous is not None:
        return previous
    make_active = reinit != "create_new"  # W&B: a create_new run leaves wandb.run (and wandb.log) alone
    if resolved.mode == "disabled":
        return _disabled(DisabledRun(resolved, config, name), make_active)

    context = detect(os.environ)
    project_name = resolved.project
    check_name("project", project_name)
    run_id = resolved.run_id or context.run_id
    # The context's resume="allow" belongs to the id it derived (a requeued job continues its run); an id
    # the user chose keeps the user's resume mode.
    resume_mode = resolved.resume or (context.resume if resolved.run_id is None else None)
    root = os.path.abspath(resolved.root)
    if run_id is not None:
        check_name("run id", run_id)
        run_id, resume_mode = _not_open_here(root, project_name, run_id, resume_mode, resolved.run_id is None)
    if run_id is None:
        run_id = random_id()
        while os.path.exists(os.path.join(root, project_name, run_id)):
            run_id = random_id()
    run_dir = os.path.join(root, project_name, run_id)
    exists = check_resume(run_dir, resume_mode)

    try:
        return _open_run(resolved, terminal, context, run_dir, run_id, exists, name, job_type,
                         config, tags, notes, plain_config(wandb_args) if wandb_args else None, make_active)
    except OSError as err:
        # Training goes on without tracking rather than dying at start on a storage problem.
        terminal.warn(f"cannot write the run directory {run_dir} ({err.strerror or err}): this run is NOT "
                      "being recorded; set HPCSYNC_DIR (or dir=) to a writable directory")
        return _disabled(DisabledRun(resolved, config, name), make_active)


def _previous_run(reinit: Any, terminal: Terminal) -> Optional[Run]:
    """W&B's ``reinit``: the active run to return (``"return_previous"``, False), or None once what must be
    finished is: every open run for ``"finish_previous"`` (True), none for ``"create_new"`` (W&B keeps them
    all open), and otherwise the active one, with a warning."""
    for run in _run.open_runs():
        if not run.recorded_here:
            run.finish()  # a forked child lets go of its parent's runs, whatever reinit says
    previous = _run.active_run()
    if reinit == "create_new":
        return None
    if reinit in (True, "finish_previous"):
        for run in reversed(_run.open_runs()):
            run.finish()
        return None
    if previous is None:
        return None
    if reinit in (False, "return_previous") and previous.recorded_here:
        return previous
    if previous.recorded_here:
        terminal.warn(f"hpc.init() while run {previous.id} is active: finishing it first (pass "
                      "reinit='create_new' to keep both open)")
    previous.finish()
    return None


def _not_open_here(root: str, project: str, run_id: str, resume_mode: Optional[str],
                   derived: bool) -> Tuple[Optional[str], Optional[str]]:
    """A run directory has one writer: an id open in this process (reinit="create_new") is refused, or, when
    it was derived from SLURM or torchrun, replaced by a random one (None) with its resume mode."""
    run_dir = os.path.join(root, project, run_id)
    if not any(os.path.abspath(r.dir) == run_dir for r in _run.open_runs()):
        return run_id, resume_mode
    if derived:
        return None, None
    raise UsageError(f"run {project}/{run_id} is open in this process: finish it first, or pass another id")


def _disabled(run: DisabledRun, make_active: bool) -> DisabledRun:
    if make_active:
        _set_module_globals(run)
    return run


def _resolve(explicit: Dict[str, Any], wandb_args: Dict[str, Any], *, dir: Optional[str], mode: Optional[str],
             resume: Any, **arguments: Any) -> Settings:
    """The run's settings: init's arguments above ``settings=`` (``explicit``), above the environment.
    W&B's modes that mean "record" are recorded in ``wandb_args`` and record offline."""
    if mode is not None and str(mode).lower() in _WANDB_MODES:
        wandb_args["mode"] = mode
        mode = _WANDB_MODES[str(mode).lower()]
    if isinstance(resume, str) and resume.lower() == "auto":
        resume = "allow"
    for key, value in (*arguments.items(), ("resume", resume), ("mode", mode)):
        if value is not None:
            explicit[key] = value
    # dir= is W&B's "where files go": below HPCSYNC_DIR, because libraries pass it on the user's behalf
    # (Lightning's WandbLogger always passes save_dir, "." by default).
    fallback = {"root": os.fspath(dir)} if dir is not None else None
    return Settings.resolve(explicit, fallback=fallback)


def check_resume(run_dir: str, resume_mode: Optional[str]) -> bool:
    """Whether the run exists; ResumeError when that contradicts the resume mode."""
    exists = os.path.isfile(os.path.join(run_dir, fmt.RUN_JSON))
    project_and_id = "/".join(run_dir.rstrip(os.sep).split(os.sep)[-2:])
    if exists and resume_mode in (None, "never"):
        raise ResumeError(run_dir, f"run {project_and_id} already exists in {run_dir}: pass "
                          "resume='allow' to continue it, or use another id")
    if not exists and resume_mode == "must":
        raise ResumeError(run_dir, f"resume='must' but run {project_and_id} does not exist in "
                          f"{os.path.dirname(os.path.dirname(run_dir))}: check the id, the project and HPCSYNC_DIR")
    return exists


def load_summary_state(run_dir: str) -> Dict[str, Any]:
    """What the writer needs to continue a run's summary: last values, accumulators, values set by hand."""
    previous = fmt.read_json(os.path.join(run_dir, fmt.SUMMARY)) or {}
    return {"last": previous.get("last", {}), "acc": previous.get("accumulators", {}),
            "manual": {k: previous.get("values", {}).get(k) for k in previous.get("set_by_hand", [])}}


@dataclass
class Prepared:
    """A run directory ready to be written: metadata of this attempt, the opened history stream, state."""

    meta: Dict[str, Any]
    history: Stream
    config: Dict[str, Any]
    summary_state: Dict[str, Any]
    resumed: bool


def prepare_run_dir(settings: Settings, terminal: Terminal, context: RunContext, run_dir: str, run_id: str,
                    exists: bool, name: Optional[str], job_type: Optional[str],
                    config: Optional[Mapping], tags: Optional[List[str]], notes: Optional[str],
                    wandb_args: Optional[Dict[str, Any]] = None,
                    extra_meta: Optional[Mapping[str, Any]] = None) -> Prepared:
    """Create or resume the directory: repair the history's torn tail, start a new attempt in run.json.
    ``wandb_args``: W&B init arguments hpc accepted without a use, recorded as run.json's ``wandb``;
    ``extra_meta``: further run.json fields, set before its first write (the MLflow door's ``mlflow``)."""
    summary_state: Dict[str, Any] = {}
    config_doc: Dict[str, Any] = {}
    if exists:
        meta = fmt.read_json(os.path.join(run_dir, fmt.RUN_JSON)) or {}
        fmt.check_version(meta, run_dir)
        summary_state = load_summary_state(run_dir)
        config_doc = fmt.read_json(os.path.join(run_dir, fmt.CONFIG)) or {}
        for key, value in (("name", name), ("group", settings.group), ("job_type", job_type),
                           ("notes", notes)):
            if value is not None:
                meta[key] = value
        if tags is not None:
            meta["tags"] = list(tags)
        meta["host"] = socket.gethostname()
        meta["argv"] = list(sys.argv)
    else:
        meta = _new_meta(settings, run_id, name or context.name or random_name(),
                         settings.group or context.group, job_type or context.job_type,
                         list(tags or []), notes or "", context)
        os.makedirs(run_dir, exist_ok=True)
    if config:
        config_doc.update(plain_config(config))

    history = Stream(os.path.join(run_dir, fmt.HISTORY), terminal)
    cut = history.open()
    if cut:
        terminal.info(f"repaired the torn tail of {history.path}: cut {cut} bytes of an unfinished row")
    meta["attempt"] = int(meta.get("attempt", 0)) + 1
    meta.setdefault("attempts", []).append({
        "attempt": meta["attempt"], "started_ms": int(time.time() * 1000), "host": socket.gethostname(),
        "pid": os.getpid(), "slurm_restart_count": (context.metadata or {}).get("restart_count"),
        "resumed_from_step": history.last_step if exists else None, "first_seq": history.next_seq,
    })
    if context.metadata is not None:
        meta["slurm"] = context.metadata
    if context.launcher is not None:
        meta["launcher"] = context.launcher
    if wandb_args:
        meta["wandb"] = wandb_args
    if extra_meta:
        meta.update(extra_meta)
    fmt.atomic_write_json(os.path.join(run_dir, fmt.RUN_JSON), meta)
    if exists:
        try:
            os.unlink(os.path.join(run_dir, fmt.EXIT))  # after run.json: readers never see a stale outcome
        except FileNotFoundError:
            pass
    if config or not exists:
        fmt.atomic_write_json(os.path.join(run_dir, fmt.CONFIG), config_doc)
    return Prepared(meta, history, config_doc, summary_state, exists)


def _open_run(settings: Settings, terminal: Terminal, context: RunContext, run_dir: str, run_id: str,
              exists: bool, name: Optional[str], job_type: Optional[str],
              config: Optional[Mapping], tags: Optional[List[str]], notes: Optional[str],
              wandb_args: Optional[Dict[str, Any]] = None, make_active: bool = True) -> Run:
    ready = prepare_run_dir(settings, terminal, context, run_dir, run_id, exists, name, job_type,
                            config, tags, notes, wandb_args)
    run = Run(settings, terminal, ready.meta, run_dir, ready.history, ready.config, ready.summary_state,
              context)
    run._start_capture()
    _run.register(run, make_active=make_active)
    _signals.install(_run.OPEN_RUNS)  # a termination signal closes every open run
    run._monitor = start_monitor(run_dir, parent_pid=os.getpid(), settings=settings,
                                 local_rank=context.local_rank, local_world_size=None)
    if make_active:
        _set_module_globals(run)
    verb = "resuming" if exists else "recording"
    terminal.info(f"{verb} run {run.name} ({run.project}/{run.id}) offline in {run_dir}")
    return run
