"""hpc.slurm.slurm_job without a cluster: parameter checking at decoration time, the tracking variables,
submitit's local executor, the checkpoint hook, and the bounded result()."""
from __future__ import annotations

import json
import os

import pytest
from support import need

try:
    import submitit
except ImportError:  # pragma: no cover - the [slurm] extra is missing
    submitit = None

from hpc.errors import JobWaitTimeout, UsageError


@pytest.fixture(autouse=True)
def _submitit_installed():
    need(submitit is not None, "submitit is not installed: pip install -e '.[slurm]'")


def slurm_job(*args, **kwargs):
    from hpc.slurm import slurm_job as decorator

    return decorator(*args, **kwargs)


def test_unknown_parameter_fails_at_decoration_listing_the_valid_ones():
    with pytest.raises(UsageError) as err:
        @slurm_job(partitio="gpu", timeout_min=5)
        def train():
            pass
    message = str(err.value)
    assert "unknown parameter(s) partitio" in message
    # Valid names come from submitit itself: shared, SLURM-specific (bare and prefixed), and ours.
    for name in ("timeout_min", "gpus_per_node", "tasks_per_node", "partition", "slurm_partition",
                 "signal_delay_s", "setup", "folder", "project", "group", "job_type", "tags", "root"):
        assert name in message


def test_issue_example_parameters_are_accepted_and_routed():
    from hpc.slurm import SlurmFunction

    fn = slurm_job(partition="gpu", nodes=1, tasks_per_node=4, gpus_per_node=4, timeout_min=120,
                   project="resnet")(lambda cfg: cfg)
    assert isinstance(fn, SlurmFunction)
    assert fn(3) == 3  # a plain call stays a plain call
    assert fn._submitit_params == {"slurm_partition": "gpu", "nodes": 1, "tasks_per_node": 4,
                                   "gpus_per_node": 4, "timeout_min": 120}
    assert fn.tracking_env == {"HPCSYNC_PROJECT": "resnet"}


@pytest.mark.parametrize("params, fragment", [
    ({"timeout_min": "2h"}, "timeout_min='2h' must be of type int"),
    ({"slurm_nodes": 1.5}, "slurm_nodes=1.5 must be of type int"),
    ({"mem_gb": True}, "mem_gb=True must be of type float"),
    ({"project": "a/b"}, "not usable as a directory name"),
    ({"group": ""}, "group='' must be a non-empty string"),
    ({"tags": "a,b"}, "must be a list of non-empty strings"),
    ({"tags": ["a,b"]}, "contain ','"),
    ({"root": 3}, "root=3 must be a path"),
])
def test_bad_values_fail_at_decoration_with_one_line(params, fragment):
    with pytest.raises(UsageError, match=None) as err:
        slurm_job(**params)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_tracking_parameters_become_hpcsync_variables_with_an_absolute_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fn = slurm_job(lambda: None, project="p", group="g 'x'", job_type="eval", tags=["a b", "c"],
                   root="rel dir")
    assert fn.tracking_env == {
        "HPCSYNC_PROJECT": "p", "HPCSYNC_RUN_GROUP": "g 'x'", "HPCSYNC_JOB_TYPE": "eval",
        "HPCSYNC_TAGS": "a b,c", "HPCSYNC_DIR": str(tmp_path / "rel dir"),
    }


def test_with_params_revalidates():
    fn = slurm_job(lambda: None, timeout_min=5)
    assert fn.with_params(group="x").tracking_env == {"HPCSYNC_RUN_GROUP": "x"}
    with pytest.raises(UsageError):
        fn.with_params(bogus=1)


def _reporter():
    # A nested function: cloudpickle ships it by value, since the job cannot import this test module.
    def report(tag):
        import os

        import hpc

        run = hpc.init(config={"tag": tag})
        run.log({"v": 1})
        run.finish()
        return run.dir, {k: v for k, v in os.environ.items() if k.startswith("HPCSYNC_")}

    return report


def test_local_executor_runs_the_same_code_path_and_init_lands_in_the_right_place(tmp_path):
    root = tmp_path / "root 'q'"
    fn = slurm_job(_reporter(), timeout_min=5, folder=str(tmp_path / "sub mit" / "%j"), project="local-proj",
                   group="grp", root=str(root), slurm_partition="ignored-locally")
    run_dir, env = fn.local("x").result()
    assert run_dir.startswith(str(root / "local-proj"))
    meta = json.loads(open(os.path.join(run_dir, "run.json")).read())
    assert meta["project"] == "local-proj" and meta["group"] == "grp" and meta["slurm"] is None
    assert env["HPCSYNC_RUN_GROUP"] == "grp"


def test_debug_executor_restores_the_environment(tmp_path):
    fn = slurm_job(_reporter(), project="dbg", root=str(tmp_path / "r"), folder=str(tmp_path / "f" / "%j"))
    os.environ["HPCSYNC_PROJECT"] = "outer"  # the conftest's monkeypatch cleans HPCSYNC_* afterwards
    run_dir, env = fn.local("y", debug=True).result()
    assert env["HPCSYNC_PROJECT"] == "dbg"
    assert os.environ["HPCSYNC_PROJECT"] == "outer"
    assert "HPCSYNC_DIR" not in os.environ


class Counter(submitit.helpers.Checkpointable if submitit else object):
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return self.n


def test_checkpointable_keeps_its_hook_and_the_requeued_callable_keeps_tracking():
    from hpc.slurm import _Tracked, _wrap

    wrapped = _wrap(Counter(), {"HPCSYNC_PROJECT": "p"})
    assert callable(getattr(wrapped, "checkpoint", None))  # what submitit looks for before requeueing
    delayed = wrapped.checkpoint()
    assert isinstance(delayed.function, _Tracked) and delayed.function.env == {"HPCSYNC_PROJECT": "p"}
    assert isinstance(delayed.function.function, Counter)
    assert not hasattr(_wrap(lambda: 1, {}), "checkpoint")  # plain functions are not made checkpointable


class FakeJob:
    job_id = "42"
    state = "RUNNING"

    def __init__(self, done_after):
        self.calls = 0
        self.done_after = done_after

    def done(self):
        self.calls += 1
        return self.calls > self.done_after

    def result(self):
        return "ok"

    def results(self):
        return ["ok", "ok too"]


def test_result_is_bounded():
    from hpc.slurm import result

    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def sleep(s):
        now[0] += s

    assert result(FakeJob(done_after=3), timeout_s=10, sleep=sleep, clock=clock) == "ok"
    with pytest.raises(JobWaitTimeout, match="job 42 did not finish within 5 s .*RUNNING"):
        result(FakeJob(done_after=100), timeout_s=5, sleep=sleep, clock=clock)
    assert isinstance(JobWaitTimeout("1", 1, "x"), TimeoutError)


def test_results_of_a_multi_task_job_are_bounded_too():
    from hpc.slurm import results

    now = [0.0]

    def sleep(s):
        now[0] += s

    assert results(FakeJob(done_after=2), timeout_s=10, sleep=sleep, clock=lambda: now[0]) == ["ok", "ok too"]
    with pytest.raises(JobWaitTimeout):
        results(FakeJob(done_after=100), timeout_s=5, sleep=sleep, clock=lambda: now[0])


def test_a_submitit_without_its_private_parameter_tables_still_works(monkeypatch):
    """hpc.slurm reads submitit's private _typed_parameters/_valid_parameters; a release without them
    must not break decoration: shared names fall back to the documented table, slurm_* pass through."""
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.delattr(submitit.AutoExecutor, "_typed_parameters")
    monkeypatch.delattr(SlurmExecutor, "_valid_parameters")
    fn = slurm_job(slurm_partition="gpu", timeout_min=5, project="p")(lambda: None)
    assert fn._submitit_params == {"slurm_partition": "gpu", "timeout_min": 5}
    with pytest.raises(UsageError) as err:
        slurm_job(timeout_min="2h")
    assert "must be of type int" in str(err.value)
    with pytest.raises(UsageError):
        slurm_job(partitio="gpu")  # an unprefixed unknown name is still refused
