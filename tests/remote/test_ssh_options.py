"""``doctor`` and ``sync`` connect with ONE options record, ``SshOptions.from_settings(settings)``: against
the real sshd, with ``ssh.allow_agent: false`` and a key that only the ssh-agent holds, doctor fails
exactly as the sync does (it used to connect with allow_agent=True, keepalive 15 s and an I/O timeout of
10 s, and say "auth OK" while every pass failed); with the agent allowed, both get in."""
from __future__ import annotations

import os
import subprocess
from typing import List, Tuple

from _runs import write_run

from sync_gateway.cli.doctor import doctor
from sync_gateway.engine.runner import Runner
from sync_gateway.settings import Settings, SshSettings
from sync_gateway.sinks.memory import MemorySink
from sync_gateway.sources import open_source
from sync_gateway.sources.sftp.source import SshOptions


def _settings(sshd, root: str, tmp_path, **ssh) -> Settings:
    return Settings(roots=[sshd.url(root)], server_url="http://127.0.0.1:9", state_dir=str(tmp_path / "state"),
                    ssh=SshSettings(known_hosts=sshd.known_hosts, config=os.devnull, **ssh))


def _doctor_ssh(settings: Settings) -> List[Tuple[bool, str, str]]:
    """doctor's ssh lines as (ok, step, message); the server part fails (nothing listens on :9)."""
    lines: List[str] = []
    doctor(settings, None, {}, out=lines.append)
    out = []
    for line in lines:
        status, _, rest = line.partition("] ")
        if rest.startswith("ssh "):
            step, _, message = rest[len("ssh "):].partition(": ")
            out.append((status == "[ok", step, message))
    return out


def _sync(settings: Settings):
    with Runner(settings, sink=MemorySink()) as runner:
        return runner.run_pass()


def test_doctor_and_sync_use_the_same_ssh_options(sshd, tmp_path, ssh_agent, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))   # no ~/.ssh/id_* to fall back on: only the agent has a key
    subprocess.run(["ssh-add", "-q", sshd.identity_file], check=True, capture_output=True)
    root = str(tmp_path / "runs")
    write_run(root, "p", "r1")

    off = _settings(sshd, root, tmp_path, allow_agent=False, keepalive_s=7.0, io_timeout_s=33.0)
    src = open_source(off.roots[0], off)
    try:
        assert src.options == SshOptions.from_settings(off)      # the record the sync connects with
        assert (src.options.allow_agent, src.options.keepalive_s, src.options.io_timeout_s) == (False, 7.0, 33.0)
    finally:
        src.close()
    checks = _doctor_ssh(off)
    assert checks[-1][:2] == (False, "auth"), checks
    rep = _sync(off)
    (why,) = rep.roots_skipped.values()
    assert checks[-1][2] == why                     # doctor fails exactly as the sync does
    assert "no usable SSH key" in why and "id_ed25519 does not exist" in why

    on = _settings(sshd, root, tmp_path, allow_agent=True)
    checks = _doctor_ssh(on)
    assert [(ok, step) for ok, step, _ in checks][-2:] == [(True, "auth"), (True, "path")], checks
    assert "agent key" in checks[-2][2]
    rep = _sync(on)
    assert not rep.roots_skipped and rep.runs_seen == 1 and rep.runs_synced == 1, rep
