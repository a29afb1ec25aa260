"""hpc.as_wandb(): `import wandb` gives hpc, and the W&B surface frameworks and scripts call works."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from compat_support import REPO, environ, need_packages

import hpc

pytestmark = pytest.mark.usefixtures("wandb_restored")


def doc(run_dir, name):
    with open(os.path.join(run_dir, name), encoding="utf-8") as f:
        return json.load(f)


def test_import_wandb_and_its_submodules_give_hpc():
    stand_in = hpc.as_wandb()
    import wandb
    import wandb.sdk.wandb_run
    from wandb.sdk.lib import RunDisabled
    from wandb.sdk.lib.config_util import ConfigError
    from wandb.wandb_run import Run

    assert wandb is stand_in and wandb.init is hpc.init and wandb.log is hpc.log
    assert Run is hpc.Run and RunDisabled is hpc.DisabledRun and wandb.sdk.wandb_run.Run is hpc.Run
    assert issubclass(ConfigError, hpc.HpcError)
    assert wandb.run is None and hasattr(wandb, "run")
    with pytest.raises(ModuleNotFoundError):
        import wandb.not_a_module  # noqa: F401
    import importlib.util
    assert importlib.util.find_spec("wandb") is not None  # how transformers and accelerate look for it


def test_hpc_as_wandb_stays_callable_after_importing_the_module_of_that_name():
    import hpc.as_wandb as module  # binds hpc.as_wandb to the module

    assert callable(hpc.as_wandb) and module() is hpc.as_wandb() and callable(module.main)


@pytest.mark.slow
def test_the_real_wandb_installed_and_imported_first_still_loses(tmp_path):
    need_packages("wandb")  # the real one, from the [compat-test] extra (CI installs it)
    code = ("import wandb as real; import hpc; hpc.as_wandb(); import wandb; "
            "print(real is not wandb, wandb.init is hpc.init)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ(str(tmp_path)),
                         timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr
    assert "the real wandb was imported before hpc.as_wandb()" in out.stderr


def test_wandb_run_follows_init_and_finish(tmp_path):
    wandb = hpc.as_wandb()
    run = wandb.init(project="p", dir=str(tmp_path))
    assert wandb.run is run and wandb.config is run.config
    wandb.finish()
    assert wandb.run is None


def test_the_whole_init_signature_is_accepted_and_recorded(tmp_path):
    wandb = hpc.as_wandb()
    run = wandb.init(project="p", dir=str(tmp_path), entity="team", reinit=True, save_code=True,
                     anonymous="allow", mode="online", resume="auto", id="r1", allow_val_change=True,
                     config={"a": 1, "b": 2, "c": 3}, config_exclude_keys=["c"],
                     settings=wandb.Settings(start_method="thread", run_group="g", x_disable_stats=True,
                                             _service_wait=30))
    run.finish()
    meta = doc(run.dir, "run.json")
    assert meta["group"] == "g" and meta["id"] == "r1"
    assert meta["wandb"] == {"entity": "team", "reinit": True, "save_code": True, "anonymous": "allow",
                             "allow_val_change": True, "config_exclude_keys": ["c"], "mode": "online",
                             "settings": {"start_method": "thread", "_service_wait": 30}}
    assert doc(run.dir, "config.json") == {"a": 1, "b": 2}


def test_dir_is_where_files_go_unless_hpcsync_dir_says_otherwise(tmp_path, monkeypatch):
    run = hpc.init(project="p", dir=str(tmp_path / "from-dir"))
    assert run.dir.startswith(str(tmp_path / "from-dir"))
    run.finish()
    monkeypatch.setenv("HPCSYNC_DIR", str(tmp_path / "shared"))
    run = hpc.init(project="p", dir=".")  # what Lightning's WandbLogger passes by default
    assert run.dir.startswith(str(tmp_path / "shared"))
    run.finish()
    run = hpc.init(project="p", dir=".", settings={"root": str(tmp_path / "explicit")})
    assert run.dir.startswith(str(tmp_path / "explicit"))
    run.finish()


def test_reinit_return_previous_gives_the_active_run(tmp_path):
    first = hpc.init(project="p", dir=str(tmp_path))
    assert hpc.init(project="p", dir=str(tmp_path), reinit="return_previous") is first
    second = hpc.init(project="p", dir=str(tmp_path), reinit="finish_previous")
    assert second is not first and doc(first.dir, "exit.json")["reason"] == "finished"
    second.finish()


def test_define_metric_takes_wandbs_arguments(tmp_path):
    run = hpc.init(project="p", dir=str(tmp_path))
    run.define_metric("train/global_step")
    run.define_metric("acc", summary="best", goal="maximize", hidden=False)  # first match wins: before "*"
    run.define_metric("loss", summary="min,max")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    for step, (loss, acc) in enumerate([(3.0, 0.1), (1.0, 0.5), (2.0, 0.3)]):
        run.log({"loss": loss, "acc": acc, "train/global_step": 10 * step})
    run.finish()
    metrics = doc(run.dir, "run.json")["metrics"]
    assert metrics[3] == {"name": "*", "step_metric": "train/global_step", "summary": None, "step_sync": True}
    assert metrics[1]["summary"] == "max" and metrics[1]["goal"] == "maximize" and metrics[2]["summary"] == "min"
    assert doc(run.dir, "summary.json")["values"]["acc"] == 0.5
    with pytest.raises(hpc.UsageError):
        hpc.init(project="p", dir=str(tmp_path)).define_metric("x", summary="best")


def test_url_login_util_watch_label_and_config_update(tmp_path, capsys):
    wandb = hpc.as_wandb()
    assert wandb.login(key="x") is True and len(wandb.util.generate_id()) == 8 and wandb.util is hpc.util
    run = wandb.init(project="p", dir=str(tmp_path))
    assert run.url is None and run.get_url() is None and run.path == f"p/{run.id}"
    run._label(code="transformers_trainer")
    wandb.watch(object(), log="all", log_freq=10)
    wandb.watch(object())
    wandb.config.update({"lr": 0.1}, allow_val_change=True)
    wandb.config.update({"lr": 0.2}, allow_val_change=False)
    run.finish()
    assert capsys.readouterr().err.count("watch() is accepted and does nothing") == 1
    assert doc(run.dir, "config.json") == {"lr": 0.2}


def test_artifacts_and_code_are_copied_into_the_run(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print(1)\n")
    (tmp_path / "src" / "notes.txt").write_text("not code\n")
    (tmp_path / "ckpt.bin").write_bytes(b"\x00\x01")
    run = hpc.init(project="p", dir=str(tmp_path / "runs"))
    art = hpc.Artifact("model-x", type="model", metadata={"acc": 0.9})
    with art.new_file("weights.bin", mode="wb") as f:
        f.write(b"abc")
    art.add_file(str(tmp_path / "ckpt.bin"), name="sub/ckpt.bin")
    run.log_artifact(art, aliases=["final"])
    hpc.log_artifact(str(tmp_path / "ckpt.bin"), name="model-x")
    run.log_code(str(tmp_path / "src"))
    run.finish()
    files = os.path.join(run.dir, "files")
    with open(os.path.join(files, "artifacts/model-x/v0/weights.bin"), "rb") as f:
        assert f.read() == b"abc"
    assert os.path.isfile(os.path.join(files, "artifacts/model-x/v0/sub/ckpt.bin"))
    assert os.path.isfile(os.path.join(files, "artifacts/model-x/v1/ckpt.bin"))
    manifest = doc(os.path.join(files, "artifacts/model-x/v0"), "hpc-artifact.json")
    assert manifest["type"] == "model" and manifest["aliases"] == ["final", "latest"]
    assert manifest["metadata"] == {"acc": 0.9} and manifest["files"] == ["sub/ckpt.bin", "weights.bin"]
    assert os.listdir(os.path.join(files, "code")) == ["train.py"]


@pytest.mark.slow
def test_python_m_hpc_as_wandb_runs_an_unchanged_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import sys, wandb\n"
                      "run = wandb.init(project='p', config={'argv': sys.argv[1:]})\n"
                      "wandb.log({'loss': 0.5})\n"
                      "print('RUN', run.dir, wandb.__name__, type(run).__module__)\n")
    out = subprocess.run([sys.executable, "-m", "hpc.as_wandb", str(script), "--lr", "1"], capture_output=True,
                         text=True, env=environ(str(tmp_path / "runs")), cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    _, run_dir, name, module = out.stdout.split()
    assert (name, module) == ("wandb", "hpc._run")
    assert doc(run_dir, "config.json") == {"argv": ["--lr", "1"]} and doc(run_dir, "exit.json")["reason"] == "finished"


@pytest.mark.slow
def test_the_scripts_exit_code_reaches_exit_json(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import wandb\nrun = wandb.init(project='p')\nprint('RUN', run.dir)\nraise SystemExit(3)\n")
    out = subprocess.run([sys.executable, "-m", "hpc.as_wandb", str(script)], capture_output=True, text=True,
                         env=environ(str(tmp_path / "runs")), cwd=REPO, timeout=120)
    assert out.returncode == 3, out.stderr
    exit_doc = doc(out.stdout.split()[-1], "exit.json")
    assert (exit_doc["exit_code"], exit_doc["reason"]) == (3, "failed")


# ---- W&B's edge semantics (issue 24, item 4) ---------------------------------------------------------------
def test_config_and_summary_without_a_run_raise_wandbs_error_with_a_message(tmp_path):
    """W&B's wandb.config and wandb.summary before init (and after finish) raise wandb.Error saying to call
    wandb.init() first; a TypeError or AttributeError on None tells the user nothing."""
    wandb = hpc.as_wandb()
    for _when in ("before init", "after finish"):
        with pytest.raises(wandb.Error, match=r"hpc.summary\['best'\] needs an active run: call hpc.init"):
            wandb.summary["best"] = 1.0
        with pytest.raises(wandb.Error, match=r"hpc.config.update needs an active run"):
            wandb.config.update({"lr": 0.1})
        with pytest.raises(wandb.Error, match=r"hpc.config\['lr'\]"):
            wandb.config["lr"]
        with pytest.raises(wandb.Error, match=r"hpc.config.lr"):
            wandb.config.lr = 0.1
        with pytest.raises(hpc.errors.NoActiveRunError, match="hpc.log"):
            wandb.log({"x": 1})
        run = wandb.init(project="p", dir=str(tmp_path))
        wandb.config.update({"lr": 0.1})
        wandb.summary["best"] = 1.0
        run.finish()
    assert doc(run.dir, "config.json") == {"lr": 0.1} and doc(run.dir, "summary.json")["values"]["best"] == 1.0


def test_reinit_create_new_keeps_the_previous_run_open(tmp_path):
    """W&B: create_new leaves the other runs open, and wandb.run (and wandb.log) where they were."""
    outer = hpc.init(project="p", id="outer", dir=str(tmp_path))
    inner = hpc.init(project="p", id="inner", dir=str(tmp_path), reinit="create_new")
    assert hpc.run is outer and hpc.config is outer.config
    inner.log({"inner": 1.0})
    outer.log({"outer": 1.0})
    hpc.log({"outer": 2.0})
    inner.finish()
    assert hpc.run is outer
    outer.log({"outer": 3.0})  # W&B-valid: the outer run is still open
    outer.finish()
    assert hpc.run is None
    assert [doc(r.dir, "exit.json")["written_rows"] for r in (outer, inner)] == [3, 1]
    assert all(doc(r.dir, "exit.json")["reason"] == "finished" for r in (outer, inner))
    with pytest.raises(hpc.UsageError, match="open in this process"):
        with hpc.init(project="p", id="again", dir=str(tmp_path)):
            hpc.init(project="p", id="again", dir=str(tmp_path), resume="allow", reinit="create_new")
    third = hpc.init(project="p", dir=str(tmp_path))
    fourth = hpc.init(project="p", dir=str(tmp_path), reinit="create_new")
    fifth = hpc.init(project="p", dir=str(tmp_path), reinit="finish_previous")  # W&B: finishes every open run
    assert all(doc(r.dir, "exit.json")["reason"] == "finished" for r in (third, fourth))
    assert hpc.run is fifth and not os.path.exists(os.path.join(fifth.dir, "exit.json"))


TWO_RUNS = """
import sys, time, hpc
outer = hpc.init(project="p", id="outer")
inner = hpc.init(project="p", id="inner", reinit="create_new")
outer.log({"x": 1.0})
inner.log({"y": 1.0})
print("outer text", flush=True)
if sys.argv[1] == "wait":
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("end", ["exit", "sigterm"])
def test_the_end_of_the_process_closes_every_open_run(tmp_path, end):
    import signal

    root = str(tmp_path / "runs")
    child = subprocess.Popen([sys.executable, "-c", TWO_RUNS, "wait" if end == "sigterm" else "exit"],
                             env=environ(root), stdout=subprocess.PIPE, text=True)
    if end == "sigterm":
        while child.stdout.readline().strip() != "ready":
            pass
        child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    outcomes = {name: doc(os.path.join(root, "p", name), "exit.json") for name in ("outer", "inner")}
    assert {o["reason"] for o in outcomes.values()} == {"finished" if end == "exit" else "killed"}, outcomes
    assert all(o["written_rows"] == 1 for o in outcomes.values()), outcomes
    for name in ("outer", "inner"):  # both runs capture the console while both are open
        with open(os.path.join(root, "p", name, "output.log"), encoding="utf-8") as f:
            assert "outer text" in f.read()


def test_a_later_or_more_specific_declaration_is_not_shadowed_by_hfs_star(tmp_path):
    """transformers' WandbCallback declares define_metric("*", step_metric="train/global_step") at train
    begin; W&B still applies the user's own declarations: a name before any glob, then the most specific."""
    run = hpc.init(project="p", dir=str(tmp_path))
    run.define_metric("eval/*", step_metric="epoch")  # before HF's "*": still the more specific
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    run.define_metric("eval/loss", summary="min")  # after "*": a name wins over every glob
    run.define_metric("eval/acc", summary="max")
    run.define_metric("eval/acc", goal="maximize")  # W&B merges a second declaration of the same name
    run.define_metric("train/loss", summary="max")
    run.define_metric("train/loss", summary="mean", overwrite=True)  # overwrite=True replaces it
    for step, (loss, acc) in enumerate([(3.0, 0.1), (1.0, 0.5), (2.0, 0.3)]):
        run.log({"eval/loss": loss, "eval/acc": acc, "train/loss": loss, "train/global_step": step, "epoch": step})
    run.finish()
    metrics = doc(run.dir, "run.json")["metrics"]
    assert [m["name"] for m in metrics] == ["train/global_step", "eval/loss", "eval/acc", "train/loss", "eval/*", "*"]
    assert metrics[2] == {"name": "eval/acc", "step_metric": None, "summary": "max", "goal": "maximize"}
    assert metrics[3] == {"name": "train/loss", "step_metric": None, "summary": "mean"}
    summary = doc(run.dir, "summary.json")["values"]
    assert (summary["eval/loss"], summary["eval/acc"], summary["train/loss"]) == (1.0, 0.5, 2.0)


def test_artifact_versions_go_on_after_a_resume(tmp_path):
    (tmp_path / "ckpt.bin").write_bytes(b"1")
    for attempt in range(3):
        run = hpc.init(project="p", id="resumed", dir=str(tmp_path / "runs"), resume="allow")
        artifact = run.log_artifact(str(tmp_path / "ckpt.bin"), name="model")
        assert artifact.version == f"v{attempt}"
        run.finish()
    versions = sorted(os.listdir(os.path.join(run.dir, "files", "artifacts", "model")))
    assert versions == ["v0", "v1", "v2"]
    assert doc(os.path.join(run.dir, "files", "artifacts", "model", "v2"), "hpc-artifact.json")["version"] == "v2"
