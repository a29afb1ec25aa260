"""The SDK's W&B-style semantics and its answers to bad input."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import hpc
from hpc import _format as fmt
from hpc._reader import read_history
from hpc.errors import ResumeError, SettingsError, UsageError


def rows(run):
    return [(r["step"], r["values"]) for r in read_history(run.dir)]


def doc(run, name):
    return json.load(open(os.path.join(run.dir, name)))


def test_auto_step_commit_false_and_explicit_steps(root):
    run = hpc.init(project="p", dir=root)
    run.log({"a": 1})                       # step 0
    run.log({"b": 2}, commit=False)         # merged into step 1
    run.log({"c": 3})                       # step 1 committed
    run.log({"d": 4}, step=5)               # pending at 5
    run.log({"e": 5}, step=5)               # merged into 5
    run.log({"f": 6}, step=7)               # 5 is written, 7 pending
    run.log({"g": 7})                       # merged into 7 and committed
    assert run.step == 8
    run.finish()
    assert rows(run) == [(0, {"a": 1}), (1, {"b": 2, "c": 3}), (5, {"d": 4, "e": 5}), (7, {"f": 6, "g": 7})]


def test_a_lower_step_is_refused_with_a_warning_and_not_written(root, capsys):
    run = hpc.init(project="p", dir=root)
    run.log({"a": 1}, step=10, commit=True)
    run.log({"a": 2}, step=3)
    run.log({"a": 3})
    run.finish()
    assert rows(run) == [(10, {"a": 1}), (11, {"a": 3})]
    assert re.search(r"refused a row at step 3: the current step is 11", capsys.readouterr().err)


def test_summary_last_value_policies_and_manual_values_win(root):
    run = hpc.init(project="p", dir=root)
    run.define_metric("val/*", summary="max")
    run.define_metric("loss", summary="min")
    run.define_metric("acc", summary="mean")
    for loss, acc, val in [(3.0, 0.1, 0.5), (1.0, 0.3, 0.9), (2.0, 0.5, 0.7)]:
        run.log({"loss": loss, "acc": acc, "val/score": val, "lr": loss / 10})
    assert run.summary["loss"] == 1.0
    assert run.summary["val/score"] == 0.9
    assert run.summary["acc"] == pytest.approx(0.3)
    assert run.summary["lr"] == 0.2
    run.summary["lr"] = 123
    assert run.summary["lr"] == 123
    run.log({"lr": 5})
    assert run.summary["lr"] == 123  # a value set by hand wins over later logs
    run.finish()
    summary = doc(run, fmt.SUMMARY)
    assert summary["values"]["loss"] == 1.0 and summary["values"]["lr"] == 123
    assert summary["set_by_hand"] == ["lr"]
    assert summary["policies"] == {"acc": "mean", "loss": "min", "val/score": "max"}


def test_two_time_scales_are_declared_in_run_json(root):
    run = hpc.init(project="p", dir=root)
    run.define_metric("train/*", step_metric="batch")
    run.define_metric("val/*", step_metric="epoch")
    for batch in range(4):
        run.log({"train/loss": 1 / (batch + 1), "batch": batch})
        if batch % 2 == 1:
            run.log({"val/acc": batch / 4, "epoch": batch // 2})
    run.finish()
    assert doc(run, fmt.RUN_JSON)["metrics"] == [
        {"name": "train/*", "step_metric": "batch", "summary": None},
        {"name": "val/*", "step_metric": "epoch", "summary": None},
    ]
    assert rows(run)[2] == (2, {"val/acc": 0.25, "epoch": 0})


def test_config_dict_like_attribute_access_and_persisted(root):
    run = hpc.init(project="p", dir=root, config={"lr": 0.1, "model": {"depth": 50}})
    assert run.config.lr == 0.1 and run.config["model"]["depth"] == 50
    run.config.batch_size = 32
    run.config.update({"epochs": 3}, allow_val_change=True)
    run.config["opt"] = np.float32(0.5)
    assert hpc.config is run.config
    run.finish()
    assert doc(run, fmt.CONFIG) == {"lr": 0.1, "model": {"depth": 50}, "batch_size": 32, "epochs": 3,
                                     "opt": 0.5}
    with pytest.raises(AttributeError):
        _ = run.config.missing


def test_values_numpy_items_nested_lists_and_bad_types(root, capsys):
    class Tensor0d:  # what torch gives: a 0-d tensor with .item()
        def item(self):
            return 2.5

    run = hpc.init(project="p", dir=root)
    run.log({"np": np.float64(1.5), "npi": np.int64(7), "arr0": np.array(3.0), "t": Tensor0d(),
             "flag": True, "name": "resnet", "nested": {"a": {"b": 1}}, "vec": [1, 2.5], "arr1": np.arange(3),
             "obj": object(), "bad_list": ["x", object()]})
    run.log({"obj": object(), "ok": 1})
    run.finish()
    (_, first), (_, second) = rows(run)
    assert first == {"np": 1.5, "npi": 7, "arr0": 3.0, "t": 2.5, "flag": True, "name": "resnet",
                     "nested/a/b": 1, "vec": [1, 2.5], "arr1": [0, 1, 2]}
    assert second == {"ok": 1}
    err = capsys.readouterr().err
    assert err.count("dropping key 'obj'") == 1  # one warning per key, not per row
    assert "dropping key 'bad_list'" in err


@pytest.mark.parametrize("key, message", [
    ("", "must not be empty"), ("   ", "must not be empty"), ("k" * 251, "the limit is 250"),
    (3, "must be strings"),
])
def test_bad_keys_raise_a_usage_error(root, key, message):
    run = hpc.init(project="p", dir=root)
    with pytest.raises(UsageError, match=message):
        run.log({key: 1, "fine": 2})
    run.finish()
    assert rows(run) == []


def test_usage_errors_before_init_after_finish_and_bad_arguments(root):
    with pytest.raises(UsageError, match=r"call hpc.init\(\) first"):
        hpc.log({"a": 1})
    run = hpc.init(project="p", dir=root)
    with pytest.raises(UsageError, match="takes a dict"):
        run.log([1, 2])
    with pytest.raises(UsageError, match="non-negative integer"):
        run.log({"a": 1}, step=-1)
    with pytest.raises(UsageError, match="non-negative integer"):
        run.log({"a": 1}, step=1.5)
    with pytest.raises(UsageError, match="summary='median'"):
        run.define_metric("a", summary="median")
    with pytest.raises(UsageError, match="policy='live'"):
        run.save("x", policy="live")
    run.finish()
    with pytest.raises(UsageError, match=r"after finish\(\)"):
        run.log({"a": 1})
    with pytest.raises(UsageError, match=r"call hpc.init\(\) first"):
        hpc.log({"a": 1})
    with pytest.raises(UsageError, match="not usable as a directory name"):
        hpc.init(project="../escape", dir=root)
    with pytest.raises(UsageError, match="not usable as a directory name"):
        hpc.init(project="p", id="a b", dir=root)
    with pytest.raises(SettingsError, match="one of offline, dryrun, disabled"):
        hpc.init(project="p", dir=root, mode="live")  # W&B's "online" is accepted: hpc records offline
    with pytest.raises(SettingsError, match="valid settings are"):
        hpc.init(project="p", dir=root, settings={"flush_interval": 1})
    assert issubclass(UsageError, hpc.HpcError) and issubclass(ResumeError, hpc.HpcError)


def test_resume_allow_must_never(root):
    with pytest.raises(ResumeError, match="does not exist"):
        hpc.init(project="p", id="r1", dir=root, resume="must")
    run = hpc.init(project="p", id="r1", dir=root, name="first", config={"a": 1})
    run.log({"x": 1})
    run.log({"x": 2})
    run.summary["best"] = 9
    run.finish(exit_code=3)
    assert doc(run, fmt.EXIT)["reason"] == "failed"
    with pytest.raises(ResumeError, match="already exists"):
        hpc.init(project="p", id="r1", dir=root)
    with pytest.raises(ResumeError, match="already exists"):
        hpc.init(project="p", id="r1", dir=root, resume="never")
    run = hpc.init(project="p", id="r1", dir=root, resume="must", config={"b": 2})
    assert run.name == "first" and run.resumed and run.step == 2
    assert not os.path.exists(os.path.join(run.dir, fmt.EXIT))  # the old outcome no longer counts
    assert run.summary["best"] == 9 and run.summary["x"] == 2
    run.log({"x": 3})
    run.finish()
    assert rows(run) == [(0, {"x": 1}), (1, {"x": 2}), (2, {"x": 3})]
    meta = doc(run, fmt.RUN_JSON)
    assert meta["attempt"] == 2 and [a["attempt"] for a in meta["attempts"]] == [1, 2]
    assert meta["attempts"][1]["resumed_from_step"] == 1
    assert doc(run, fmt.CONFIG) == {"a": 1, "b": 2}
    assert doc(run, fmt.EXIT) == {**doc(run, fmt.EXIT), "attempt": 2, "reason": "finished", "exit_code": 0}


def test_environment_settings_and_argument_precedence(root, monkeypatch, tmp_path):
    env_root = str(tmp_path / "env-root")
    monkeypatch.setenv("HPCSYNC_DIR", env_root)
    monkeypatch.setenv("HPCSYNC_PROJECT", "envproj")
    monkeypatch.setenv("HPCSYNC_RUN_GROUP", "g1")
    monkeypatch.setenv("HPCSYNC_RUN_ID", "fromenv")
    run = hpc.init()
    assert run.dir == os.path.join(env_root, "envproj", "fromenv") and run.group == "g1"
    run.finish()
    monkeypatch.setenv("HPCSYNC_RESUME", "allow")
    run = hpc.init(project="argproj", dir=root, group="g2")  # arguments beat the environment...
    # ...except dir=, W&B's "where files go", which libraries pass for the user: HPCSYNC_DIR wins over it
    assert run.dir == os.path.join(env_root, "argproj", "fromenv") and run.group == "g2"
    run.finish()
    monkeypatch.setenv("HPCSYNC_MODE", "dryrun")  # the seed's name for offline
    assert hpc.init(dir=root).dir is not None
    monkeypatch.setenv("HPCSYNC_FLUSH_INTERVAL_S", "soon")
    with pytest.raises(SettingsError, match="HPCSYNC_FLUSH_INTERVAL_S"):
        hpc.init(dir=root)


def test_disabled_mode_is_a_cheap_no_op(root, monkeypatch):
    monkeypatch.setenv("HPCSYNC_MODE", "disabled")
    run = hpc.init(project="p", dir=root, config={"a": 1})
    hpc.log({"a": object()})
    run.log({"": 1}, step=-5)
    run.summary["x"] = 1
    assert run.config.a == 1 and hpc.run is run
    hpc.finish()
    assert not os.path.exists(root) and hpc.run is None


def test_names_are_readable_and_ids_unique(root):
    runs = [hpc.init(project="p", dir=root) for _ in range(5)]
    for r in runs:
        r.finish()
    assert len({r.id for r in runs}) == 5
    assert all(re.fullmatch(r"[a-z0-9]{8}", r.id) for r in runs)
    assert all(re.fullmatch(r"[a-z]+-[a-z]+-\d{1,3}", r.name) for r in runs)


def test_module_level_api_like_wandb(root):
    import hpc as wandb

    run = wandb.init(project="p", dir=root, config={"lr": 1})
    assert wandb.run is run and wandb.config.lr == 1
    wandb.log({"loss": 0.5})
    wandb.define_metric("loss", summary="min")
    wandb.summary["note"] = "ok"
    wandb.finish()
    assert wandb.run is None and rows(run) == [(0, {"loss": 0.5})]


def test_init_while_active_finishes_the_previous_run(root):
    first = hpc.init(project="p", dir=root)
    second = hpc.init(project="p", dir=root)
    assert json.load(open(os.path.join(first.dir, fmt.EXIT)))["reason"] == "finished"
    assert hpc.run is second


def test_context_manager_marks_failure(root):
    with pytest.raises(RuntimeError):
        with hpc.init(project="p", dir=root) as run:
            run.log({"a": 1})
            raise RuntimeError("boom")
    assert doc(run, fmt.EXIT)["reason"] == "failed" and doc(run, fmt.EXIT)["exit_code"] == 1


def test_save_now_end_and_ignore_globs(root, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "ckpt").mkdir(parents=True)
    (work / "ckpt" / "a.pt").write_bytes(b"A")
    (work / "ckpt" / "b.tmp").write_bytes(b"B")
    (work / "notes.txt").write_text("v1")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HPCSYNC_IGNORE_GLOBS", "*.tmp, secret*")
    run = hpc.init(project="p", dir=root)
    run.save("ckpt/*")
    run.save("notes.txt", policy="end")
    run.save("nothing-here*")
    run._sync()
    (work / "notes.txt").write_text("v2")  # "end" copies what exists at finish
    run.finish()
    files = os.path.join(run.dir, fmt.FILES_DIR)
    found = sorted(os.path.relpath(os.path.join(d, f), files) for d, _, fs in os.walk(files) for f in fs)
    assert found == ["ckpt/a.pt", "notes.txt"]
    assert open(os.path.join(files, "notes.txt")).read() == "v2"


def test_console_output_is_captured_without_changing_what_the_user_sees(root, capsys):
    run = hpc.init(project="p", dir=root)
    print("hello from training")
    import sys

    print("to stderr", file=sys.stderr)
    run.finish()
    seen = capsys.readouterr()
    assert "hello from training" in seen.out and "to stderr" in seen.err
    log = open(os.path.join(run.dir, fmt.OUTPUT)).read()
    assert "hello from training\n" in log and "to stderr\n" in log
    print("after finish")
    assert "after finish" not in open(os.path.join(run.dir, fmt.OUTPUT)).read()


def test_console_off_and_silent(root, monkeypatch, capsys):
    monkeypatch.setenv("HPCSYNC_CONSOLE", "off")
    monkeypatch.setenv("HPCSYNC_SILENT", "true")
    run = hpc.init(project="p", dir=root)
    print("not captured")
    run.log({"a": 1}, step=5, commit=True)
    run.log({"a": 1}, step=1)  # would warn
    run.finish()
    assert not os.path.exists(os.path.join(run.dir, fmt.OUTPUT))
    assert "hpc:" not in capsys.readouterr().err


def test_heartbeat_is_refreshed_while_alive(root):
    import time

    run = hpc.init(project="p", dir=root, settings={"heartbeat_interval_s": 0.2})
    path = os.path.join(run.dir, fmt.HEARTBEAT)
    deadline = time.time() + 10
    first = None
    while time.time() < deadline:
        if os.path.exists(path):
            beat = json.load(open(path))["ts_ms"]
            first = first or beat
            if beat > first:
                break
        time.sleep(0.05)
    run.finish()
    assert first is not None and beat > first
