"""~/.ssh/config is honoured: Host aliases, User, Port, IdentityFile, UserKnownHostsFile, ProxyJump."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from _runs import write_run

from sync_gateway.readers.hpc.discovery import discover_hpc
from sync_gateway.sources.sftp._ssh import SshOptions, parse_ssh_url, resolve_hops
from sync_gateway.sources.sftp.source import SftpSource, SshConfigError, SshUnreachableError


def test_parse_ssh_url():
    assert parse_ssh_url("ssh://alice@login1:2200/scratch/runs") == ("alice", "login1", 2200, "/scratch/runs")
    assert parse_ssh_url("ssh://Login-Alias/scratch/runs") == (None, "Login-Alias", None, "/scratch/runs")
    assert parse_ssh_url("ssh://[::1]:22/x") == (None, "::1", 22, "/x")
    assert parse_ssh_url("ssh://h/~/runs") == (None, "h", None, "runs")          # relative to the home
    for bad in ("/local/path", "ssh:///no-host", "ssh://host", "ssh://host/", "ssh://host:port/x"):
        with pytest.raises(SshConfigError):
            parse_ssh_url(bad)


def test_resolve_hops_follows_ssh_config(tmp_path):
    config = tmp_path / "config"
    config.write_text(
        "Host login\n  HostName login.example.org\n  User alice\n  Port 2200\n  IdentityFile ~/.ssh/lab\n"
        "  ProxyJump gw1,bob@gw2:2022\n"
        "Host gw1\n  HostName gw1.example.org\n  ProxyJump outer\n"
        "Host outer\n  HostName outer.example.org\n  User carol\n"
        "Host loop\n  ProxyJump loop\n")
    hops = resolve_hops("login", None, None, SshOptions(ssh_config=str(config), known_hosts="/kh"))
    assert [(h.hostname, h.port, h.user) for h in hops][:3] == [
        ("outer.example.org", 22, "carol"), ("gw1.example.org", 22, hops[1].user), ("gw2", 2022, "bob")]
    last = hops[-1]
    assert (last.hostname, last.port, last.user) == ("login.example.org", 2200, "alice")
    assert last.identity_files == (os.path.expanduser("~/.ssh/lab"),)
    assert last.known_hosts_files == ("/kh",) and last.known_hosts_name == "[login.example.org]:2200"
    # the URL's user and port win over the config, as on ssh's command line
    direct = resolve_hops("login", "dave", 2201, SshOptions(ssh_config=str(config)))[-1]
    assert (direct.user, direct.port) == ("dave", 2201)
    with pytest.raises(SshConfigError, match="loop"):
        resolve_hops("loop", None, None, SshOptions(ssh_config=str(config)))
    with pytest.raises(SshConfigError, match="does not exist"):
        resolve_hops("x", None, None, SshOptions(ssh_config=str(tmp_path / "absent")))


@pytest.fixture
def root(tmp_path):
    write_run(str(tmp_path / "runs"), "p", "r1")
    return str(tmp_path / "runs")


def test_host_alias_from_ssh_config(sshd, root, no_agent):
    # nothing but the alias: HostName, Port, User, IdentityFile and UserKnownHostsFile come from the config
    src = SftpSource(f"ssh://hpc-login{root}", ssh_config=sshd.ssh_config)
    try:
        assert [r.run_id for r in discover_hpc(src)] == ["r1"]
        assert [(h.hostname, h.port, h.user) for h in src.hops] == [("127.0.0.1", sshd.port, sshd.user)]
    finally:
        src.close()


def test_proxyjump_through_the_bastion(sshd, root, no_agent):
    before = sshd.bastion_log().count(f"target 127.0.0.1 port {sshd.port}")
    src = SftpSource(f"ssh://hpc-behind-bastion{root}", ssh_config=sshd.ssh_config)
    try:
        assert [r.run_id for r in discover_hpc(src)] == ["r1"]
        assert [h.port for h in src.hops] == [sshd.bastion_port, sshd.port]
        (run,) = discover_hpc(src)
        assert src.read_document(run, "run.json") == Path(run.location, "run.json").read_bytes()
    finally:
        src.close()
    # the bastion really forwarded the connection (direct-tcpip), once for this source
    assert sshd.bastion_log().count(f"target 127.0.0.1 port {sshd.port}") == before + 1


def test_proxyjump_with_the_bastion_refusing_to_forward(sshd, root, tmp_path, no_agent):
    # The bastion only forwards to the main sshd (PermitOpen): asking it for another port fails cleanly.
    config = tmp_path / "config"
    config.write_text(Path(sshd.ssh_config).read_text() + (
        f"\nHost elsewhere\n    HostName 127.0.0.1\n    Port {sshd.bastion_port}\n    User {sshd.user}\n"
        f"    IdentityFile {sshd.identity_file}\n    UserKnownHostsFile {sshd.known_hosts}\n"
        f"    ProxyJump hpc-bastion\n"))
    src = SftpSource(f"ssh://elsewhere{root}", ssh_config=str(config), connect_timeout_s=5)
    with pytest.raises(SshUnreachableError, match="jump host refused to forward"):
        discover_hpc(src)


def test_from_settings_reads_the_gateway_ssh_section(sshd, root, no_agent):
    from types import SimpleNamespace

    settings = SimpleNamespace(ssh=SimpleNamespace(known_hosts=sshd.known_hosts, config=sshd.ssh_config,
                                                   identity_file=None, connect_timeout_s=5.0, keepalive_s=7.0))
    src = SftpSource.from_settings(f"ssh://hpc-login{root}", settings)
    try:
        assert (src.options.known_hosts, src.options.ssh_config, src.options.keepalive_s) == (
            sshd.known_hosts, sshd.ssh_config, 7.0)
        assert [r.run_id for r in discover_hpc(src)] == ["r1"]
    finally:
        src.close()
    # no ssh section at all: OpenSSH's defaults (~/.ssh/config, ~/.ssh/known_hosts)
    bare = SftpSource.from_settings(f"ssh://127.0.0.1:{sshd.port}{root}", SimpleNamespace())
    assert bare.options.known_hosts is None and bare.options.connect_timeout_s == 10.0


def test_the_bastion_host_key_is_verified_too(sshd, root, tmp_path, no_agent):
    from sync_gateway.sources.sftp.source import SshHostKeyError

    only_main = tmp_path / "known_hosts"
    only_main.write_text("".join(line + "\n" for line in Path(sshd.known_hosts).read_text().splitlines()
                                 if line.startswith(f"[127.0.0.1]:{sshd.port} ")))
    config = tmp_path / "config"
    config.write_text(Path(sshd.ssh_config).read_text().replace(sshd.known_hosts, str(only_main)))
    src = SftpSource(f"ssh://hpc-behind-bastion{root}", ssh_config=str(config))
    with pytest.raises(SshHostKeyError, match=rf"\[127.0.0.1\]:{sshd.bastion_port} is not in"):
        discover_hpc(src)


def test_settings_positional_as_the_gateway_factory_passes_them(sshd, root, no_agent):
    from types import SimpleNamespace

    settings = SimpleNamespace(ssh={"known_hosts": sshd.known_hosts, "config": sshd.ssh_config,
                                    "keepalive_s": 9.0})
    src = SftpSource(f"ssh://hpc-login{root}", settings, keepalive_s=3.0)   # a keyword wins over settings
    try:
        assert (src.options.known_hosts, src.options.ssh_config, src.options.keepalive_s,
                src.options.connect_timeout_s) == (sshd.known_hosts, sshd.ssh_config, 3.0, 10.0)
        assert [r.run_id for r in discover_hpc(src)] == ["r1"]
    finally:
        src.close()
