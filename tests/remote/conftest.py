"""Fixtures for the SFTP source: a real OpenSSH sshd (and a bastion) started by scripts/sshd/start.sh."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from support import need  # noqa: E402  (tests/support.py, on the path via tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    state: Path
    user: str
    port: int
    bastion_port: int
    pid: int
    bastion_pid: int
    known_hosts: str
    ssh_config: str
    identity_file: str

    def url(self, path: str, host: str = "127.0.0.1", port: int = 0) -> str:
        return f"ssh://{self.user}@{host}:{port or self.port}{path}"

    def session_pids(self):
        """The processes serving the current connections to the main sshd (its children, recursively)."""
        import psutil

        return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]

    def bastion_log(self) -> str:
        return (self.state / "bastion" / "sshd.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Sshd:
    need(os.access(SSHD, os.X_OK), f"{SSHD} is missing (install: scripts/ci/install-sshd.sh)")
    try:
        import paramiko  # noqa: F401
    except ImportError:
        need(False, "paramiko is missing (pip install -e '.[remote]')")
    # SSHD_STATE_DIR: use (and leave running) the sshd that scripts/sshd/start.sh started there, e.g. by
    # .ci/run or by hand; start.sh is idempotent. Otherwise start a private one for this session.
    shared = os.environ.get("SSHD_STATE_DIR")
    state = Path(shared) if shared else tmp_path_factory.mktemp("sshd")
    ports = {} if shared else {"SSHD_PORT": str(_free_port()), "SSHD_BASTION_PORT": str(_free_port())}
    # A private sshd takes free ports: two suites on one machine (or a busy 2222) must not collide.
    start = subprocess.run([str(REPO / "scripts/sshd/start.sh"), str(state)], capture_output=True, text=True,
                           timeout=60, env={**os.environ, **ports})
    if start.returncode != 0:
        pytest.fail(f"scripts/sshd/start.sh failed: {start.stderr.strip()}", pytrace=False)
    env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines() if "=" in line)
    try:
        yield Sshd(state=state, user=env["SSHD_USER"], port=int(env["SSHD_PORT"]),
                   bastion_port=int(env["SSHD_BASTION_PORT"]), pid=int(env["SSHD_PID"]),
                   bastion_pid=int(env["SSHD_BASTION_PID"]), known_hosts=env["SSHD_KNOWN_HOSTS"],
                   ssh_config=env["SSHD_SSH_CONFIG"], identity_file=env["SSHD_IDENTITY_FILE"])
    finally:
        if not shared:
            subprocess.run([str(REPO / "scripts/sshd/stop.sh"), str(state)], capture_output=True, timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_agent(monkeypatch):
    """Tests decide which keys exist: a developer's ssh-agent must not help them along."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def source_factory(sshd, no_agent):
    """SftpSource objects on the test sshd (explicit key and known_hosts), closed after the test."""
    from sync_gateway.sources.sftp.source import SftpSource

    made = []

    def make(root: str, **kwargs):
        kwargs.setdefault("known_hosts", sshd.known_hosts)
        kwargs.setdefault("identity_file", sshd.identity_file)
        kwargs.setdefault("ssh_config", os.devnull)  # not the developer's ~/.ssh/config
        kwargs.setdefault("io_timeout_s", 20.0)
        src = SftpSource(sshd.url(root), **kwargs)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


@pytest.fixture
def ssh_agent(tmp_path, monkeypatch):
    """A real ssh-agent on a socket of its own, stopped by its PID."""
    import re
    import signal

    sock = tmp_path / "agent.sock"
    out = subprocess.run(["ssh-agent", "-s", "-a", str(sock)], check=True, capture_output=True, text=True).stdout
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", out).group(1))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    try:
        yield str(sock)
    finally:
        os.kill(pid, signal.SIGTERM)
