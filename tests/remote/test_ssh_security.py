"""Host keys are verified and never added; authentication is by key only, with clear errors."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from _runs import write_run

from sync_gateway.errors import (
    PermanentError,
    RetryableError,
    SshAuthError,
    SshConfigError,
    SshHostKeyError,
    SshUnreachableError,
)
from sync_gateway.readers.hpc.discovery import discover_hpc
from sync_gateway.sources.sftp.source import check_ssh_root


def _keygen(path, *extra):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path), *extra], check=True)
    return str(path)


def _fingerprint(pub_path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub_path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


@pytest.fixture
def root(tmp_path):
    write_run(str(tmp_path / "runs"), "p", "r1")
    return str(tmp_path / "runs")


def test_unknown_host_key_is_refused_and_never_added(sshd, source_factory, root, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    src = source_factory(root, known_hosts=str(known))
    with pytest.raises(SshHostKeyError) as info:
        discover_hpc(src)
    message = str(info.value)
    assert isinstance(info.value, PermanentError)
    assert "\n" not in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in message
    assert _fingerprint(sshd.state / "main" / "host_ed25519.pub") in message   # what to check it against
    assert known.read_text() == ""                                              # never added
    missing = tmp_path / "no-such-known-hosts"
    with pytest.raises(SshHostKeyError, match="is not in"):
        discover_hpc(source_factory(root, known_hosts=str(missing)))
    assert not missing.exists()


def test_changed_host_key_is_refused(sshd, source_factory, root, tmp_path):
    impostor = _keygen(tmp_path / "impostor")
    line = Path(impostor + ".pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {line[0]} {line[1]}\n")
    with pytest.raises(SshHostKeyError, match="CHANGED") as info:
        discover_hpc(source_factory(root, known_hosts=str(known)))
    message = str(info.value)
    assert "\n" not in message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in message and "ssh-keyscan" in message
    assert _fingerprint(impostor + ".pub") in message
    assert _fingerprint(sshd.state / "main" / "host_ed25519.pub") in message
    # a known key of another type only is also a changed key, not an unknown one
    rsa = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    kind, blob = Path(str(rsa) + ".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    with pytest.raises(SshHostKeyError, match="CHANGED"):
        discover_hpc(source_factory(root, known_hosts=str(known)))


def test_hashed_known_hosts_entries_are_understood(sshd, source_factory, root, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text((sshd.state / "known_hosts").read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "|1|" in known.read_text()
    assert [r.run_id for r in discover_hpc(source_factory(root, known_hosts=str(known)))] == ["r1"]


def test_missing_encrypted_and_unauthorized_keys_are_clear_errors(sshd, source_factory, root, tmp_path):
    with pytest.raises(SshConfigError, match="identity file .*nope does not exist"):
        discover_hpc(source_factory(root, identity_file=str(tmp_path / "nope")))

    encrypted = _keygen(tmp_path / "encrypted", "-N", "secret")
    with pytest.raises(SshAuthError) as info:
        discover_hpc(source_factory(root, identity_file=encrypted))
    assert "encrypted" in str(info.value) and "ssh-add" in str(info.value) and "\n" not in str(info.value)

    stranger = _keygen(tmp_path / "stranger")
    with pytest.raises(SshAuthError, match="refused every key offered"):
        discover_hpc(source_factory(root, identity_file=stranger))

    # no key at all: a config that names only missing files, no agent
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n    IdentityFile {tmp_path}/absent_key\n")
    with pytest.raises(SshAuthError, match="no usable SSH key.*absent_key does not exist.*no ssh-agent"):
        discover_hpc(source_factory(root, identity_file=None, ssh_config=str(config)))


def test_unreachable_host_is_retryable(source_factory, root):
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from sync_gateway.sources.sftp.source import SftpSource

    src = SftpSource(f"ssh://127.0.0.1:{port}{root}", known_hosts=os.devnull, ssh_config=os.devnull,
                     connect_timeout_s=3)
    with pytest.raises(SshUnreachableError, match=f"cannot reach 127.0.0.1:{port}") as info:
        discover_hpc(src)
    assert isinstance(info.value, RetryableError)


def test_doctor_names_the_failing_step(sshd, root, tmp_path, no_agent):
    common = dict(ssh_config=os.devnull, identity_file=sshd.identity_file, connect_timeout_s=5)
    ok = check_ssh_root(sshd.url(root), known_hosts=sshd.known_hosts, **common)
    assert [(c.name, c.ok) for c in ok] == [("config", True), ("reachable", True), ("host key", True),
                                            ("auth", True), ("path", True)]
    assert "OpenSSH" in ok[1].message and "1 entries" in ok[-1].message

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    unknown = check_ssh_root(sshd.url(root), known_hosts=str(empty), **common)
    assert [(c.name, c.ok) for c in unknown][-1] == ("host key", False)
    assert "ssh-keyscan" in unknown[-1].message

    missing_path = check_ssh_root(sshd.url(root + "/absent"), known_hosts=sshd.known_hosts, **common)
    assert missing_path[-1].name == "path" and not missing_path[-1].ok

    stranger = _keygen(tmp_path / "stranger")
    auth = check_ssh_root(sshd.url(root), known_hosts=sshd.known_hosts, ssh_config=os.devnull,
                          identity_file=stranger)
    assert (auth[-1].name, auth[-1].ok) == ("auth", False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = check_ssh_root(f"ssh://127.0.0.1:{port}{root}", known_hosts=sshd.known_hosts, **common)
    assert [(c.name, c.ok) for c in down] == [("config", True), ("reachable", False)]

    bad = check_ssh_root("ssh://host-without-path", known_hosts=sshd.known_hosts)
    assert [(c.name, c.ok) for c in bad] == [("config", False)]


def test_a_failed_connect_fails_fast_until_retry_time(root, tmp_path):
    """A pass over many runs of an unreachable host must not dial (and wait) once per run."""
    import threading

    from sync_gateway.records import RunRef
    from sync_gateway.sources.sftp.source import SftpSource

    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def not_ssh():  # accepts and hangs up at once: every connection attempt is counted
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=not_ssh, daemon=True).start()
    now = [1000.0]
    src = SftpSource(f"ssh://127.0.0.1:{server.getsockname()[1]}{root}", known_hosts=os.devnull,
                     ssh_config=os.devnull, connect_timeout_s=5, retry_connect_after_s=30, clock=lambda: now[0])
    run = RunRef("p", "r1", os.path.join(root, "p", "r1"))
    try:
        with pytest.raises(SshUnreachableError, match="handshake"):
            discover_hpc(src)
        for _ in range(20):
            with pytest.raises(SshUnreachableError, match="handshake"):
                src.scan(run)
        assert len(accepted) == 1
        now[0] += 31
        with pytest.raises(SshUnreachableError):
            src.read_document(run, "run.json")
        assert len(accepted) == 2
        src.close()   # a new pass: try again at once
        with pytest.raises(SshUnreachableError):
            src.scan(run)
        assert len(accepted) == 3
    finally:
        server.close()


def test_agent_authentication(sshd, root, tmp_path, ssh_agent, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))   # no ~/.ssh/id_* to fall back on
    subprocess.run(["ssh-add", "-q", sshd.identity_file], check=True, capture_output=True)
    checks = check_ssh_root(sshd.url(root), known_hosts=sshd.known_hosts, ssh_config=os.devnull)
    assert [(c.name, c.ok) for c in checks][-2:] == [("auth", True), ("path", True)]
    assert "agent key" in checks[-2].message and _fingerprint(sshd.identity_file + ".pub") in checks[-2].message
    from sync_gateway.sources.sftp.source import SftpSource

    src = SftpSource(sshd.url(root), known_hosts=sshd.known_hosts, ssh_config=os.devnull)
    try:
        assert [r.run_id for r in discover_hpc(src)] == ["r1"]
    finally:
        src.close()
    # the same without the agent: no key at all, a clear error
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(SshAuthError, match="no usable SSH key.*id_ed25519 does not exist.*no ssh-agent"):
        discover_hpc(SftpSource(sshd.url(root), known_hosts=sshd.known_hosts, ssh_config=os.devnull))


def test_gateway_doctor_checks_ssh_roots_with_the_configs_ssh_section(sshd, root, tmp_path, no_agent, capsys):
    import yaml

    from sync_gateway.cli.commands import main as gateway_main

    config = tmp_path / "gateway.yaml"

    def doctor(known_hosts):
        config.write_text(yaml.safe_dump({
            "roots": [sshd.url(root)], "server": {"kind": "mlflow", "url": "http://127.0.0.1:9"},
            "state_dir": str(tmp_path / "state"),
            "ssh": {"known_hosts": known_hosts, "config": os.devnull, "identity_file": sshd.identity_file,
                    "connect_timeout_s": 5}}))
        gateway_main(["doctor", "--config", str(config)])  # the server part fails: nothing listens on :9
        return capsys.readouterr().out

    out = doctor(sshd.known_hosts)
    for step in ("reachable", "host key", "auth", "path"):
        assert f"[ok] ssh {step}" in out, out
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    out = doctor(str(empty))
    assert "[FAIL] ssh host key" in out and "ssh-keyscan" in out and "[ok] ssh auth" not in out
