"""hpc._signals: real signals sent to this process (or a child), a recording stand-in for the run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from hpc import _signals
from hpc._context import detect
from hpc.errors import SettingsError


class RecordingRun:
    """Stands in for hpc.Run: only the private close hook the handlers call."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def _finish(self, exit_code, reason):
        self.calls.append((exit_code, reason))
        if self.fail:
            raise self.fail


@pytest.fixture(autouse=True)
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    yield
    _signals.uninstall()
    for s, h in saved.items():
        signal.signal(s, h)


def never(_context):
    return False


def test_usr2_closes_as_preempted_then_chains_to_the_previous_python_handler():
    seen = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    run = RecordingRun()
    _signals.install(run, environ={}, probe=never)
    os.kill(os.getpid(), signal.SIGUSR2)
    assert run.calls == [(128 + signal.SIGUSR2, "preempted")]
    assert seen == [signal.SIGUSR2]


def test_sigterm_is_killed_unless_slurm_requeues():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run = RecordingRun()
    _signals.install(run, environ={}, probe=never)
    os.kill(os.getpid(), signal.SIGTERM)
    assert run.calls == [(128 + signal.SIGTERM, "killed")]


def test_sigterm_during_a_requeue_is_preempted_and_the_probe_sees_the_context():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asked = []
    run = RecordingRun()
    _signals.install(run, environ={"SLURM_JOB_ID": "5"}, probe=lambda ctx: asked.append(ctx) or True)
    os.kill(os.getpid(), signal.SIGTERM)
    assert run.calls == [(143, "preempted")]
    assert asked[0].metadata["job_id"] == "5"


def test_only_the_first_signal_closes_the_run_but_every_signal_is_chained():
    seen = []
    signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    run = RecordingRun()
    _signals.install(run, environ={}, probe=never)
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGTERM)
    assert run.calls == [(140, "preempted")]
    assert seen == [signal.SIGUSR2, signal.SIGTERM]


def test_a_user_chosen_signal_counts_as_preemption():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run = RecordingRun()
    _signals.install(run, preempt_signals="TERM", environ={}, probe=never)
    os.kill(os.getpid(), signal.SIGTERM)
    assert run.calls == [(143, "preempted")]


def test_a_failing_close_is_reported_and_the_chain_still_runs(caplog):
    seen = []
    signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    _signals.install(RecordingRun(fail=OSError("disk full")), environ={}, probe=never)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert seen == [signal.SIGUSR1]
    assert "disk full" in caplog.text


def test_a_second_install_moves_to_the_new_run_and_never_chains_to_itself():
    seen = []
    signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    first, second = RecordingRun(), RecordingRun()
    _signals.install(first, environ={}, probe=never)
    _signals.install(second, environ={}, probe=never)
    os.kill(os.getpid(), signal.SIGUSR2)
    assert first.calls == [] and second.calls == [(140, "preempted")]
    assert seen == [signal.SIGUSR2]  # once: the user's handler, not our own twice


def test_uninstall_gives_back_the_previous_handlers():
    def mine(s, f):
        pass
    signal.signal(signal.SIGUSR1, mine)
    _signals.install(RecordingRun(), environ={}, probe=never)
    assert signal.getsignal(signal.SIGUSR1) is not mine
    _signals.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is mine


def test_outside_the_main_thread_it_warns_and_installs_nothing(caplog):
    before = signal.getsignal(signal.SIGUSR2)
    t = threading.Thread(target=_signals.install, args=(RecordingRun(),), kwargs={"environ": {}})
    t.start()
    t.join(10)
    assert signal.getsignal(signal.SIGUSR2) == before
    assert "outside the main thread" in caplog.text


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR2"])
def test_default_action_is_re_raised_so_the_process_dies_by_the_signal(tmp_path, signame):
    record = tmp_path / "record"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from hpc import _signals
        class Run:
            def _finish(self, exit_code, reason):
                open({str(record)!r}, "w").write(f"{{exit_code}} {{reason}}")
        _signals.install(Run(), environ={{}}, probe=lambda ctx: None)
        os.kill(os.getpid(), signal.{signame})
        print("survived")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    sig = getattr(signal, signame)
    assert done.returncode == -sig, done.stderr
    assert "survived" not in done.stdout
    assert record.read_text() == f"{128 + sig} {'killed' if signame == 'SIGTERM' else 'preempted'}"


def test_parse_signals_accepts_names_and_numbers_and_rejects_the_rest():
    assert _signals.parse_signals("USR1, SIGUSR2") == (signal.SIGUSR1, signal.SIGUSR2)
    assert _signals.parse_signals(["usr2", 10]) == (signal.SIGUSR2, signal.SIGUSR1)
    with pytest.raises(SettingsError, match="USR1, USR2"):
        _signals.parse_signals("USR9")
    with pytest.raises(SettingsError, match="not KILL"):
        _signals.parse_signals("KILL")


class FakeRunner:
    def __init__(self, stdout="", returncode=0, exc=None):
        self.stdout, self.returncode, self.exc, self.argv = stdout, returncode, exc, None

    def __call__(self, argv, **kwargs):
        self.argv = argv
        assert kwargs["timeout"] > 0
        if self.exc:
            raise self.exc
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "")


# `scontrol show job -o` lines as this cluster printed them while SIGTERM was being delivered.
REQUEUE_LINE = "JobId=5 JobName=st.sh JobState=COMPLETING Reason=None Requeue=1 Restarts=1 BatchFlag=1"
CANCEL_LINE = "JobId=6 JobName=st.sh JobState=COMPLETING Reason=None Requeue=1 Restarts=0 BatchFlag=1"


def test_probe_reads_the_restart_count_against_the_environment():
    first = detect({"SLURM_JOB_ID": "5"})
    assert _signals.slurm_requeue_probe(first, FakeRunner(REQUEUE_LINE)) is True
    assert _signals.slurm_requeue_probe(first, FakeRunner(CANCEL_LINE)) is False
    second = detect({"SLURM_JOB_ID": "5", "SLURM_RESTART_COUNT": "1"})
    assert _signals.slurm_requeue_probe(second, FakeRunner(REQUEUE_LINE)) is False
    runner = FakeRunner(REQUEUE_LINE)
    _signals.slurm_requeue_probe(first, runner)
    assert runner.argv[-1] == "5"


def test_probe_cannot_tell_outside_slurm_or_when_scontrol_fails(caplog):
    assert _signals.slurm_requeue_probe(detect({}), FakeRunner(REQUEUE_LINE)) is None
    ctx = detect({"SLURM_JOB_ID": "5"})
    assert _signals.slurm_requeue_probe(ctx, FakeRunner(exc=FileNotFoundError("scontrol"))) is None
    assert _signals.slurm_requeue_probe(ctx, FakeRunner(exc=subprocess.TimeoutExpired("scontrol", 2))) is None
    assert _signals.slurm_requeue_probe(ctx, FakeRunner("slurm_load_jobs error", returncode=1)) is None
    assert caplog.text.count("job 5") == 3


@pytest.mark.parametrize("signame, reason", [("SIGUSR2", "preempted"), ("SIGTERM", "killed")])
def test_hpc_init_installs_the_handlers_for_a_real_run(tmp_path, signame, reason):
    """The call site in hpc.init: a real run, a real signal, exit.json written before the process dies."""
    code = textwrap.dedent(f"""
        import os, signal
        import hpc
        run = hpc.init(project="sig", dir={str(tmp_path)!r}, id="r1")
        for i in range(3):
            run.log({{"i": i}})
        os.kill(os.getpid(), signal.{signame})
        run.log({{"i": 99}})
        print("survived")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCSYNC_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    sig = getattr(signal, signame)
    assert done.returncode == -sig, done.stderr
    assert "survived" not in done.stdout
    exit_doc = __import__("json").loads((tmp_path / "sig" / "r1" / "exit.json").read_text())
    assert (exit_doc["reason"], exit_doc["exit_code"], exit_doc["history_records"]) == (reason, 128 + sig, 3)
