"""An air-gap export whose root is an ssh:// root on a real OpenSSH sshd (issue 21's follow-up): the bundles
carry exactly the bytes of the remote files (a link out of the root excluded), and a second export after
the runs grew carries only what is new; the mirror after import equals the remote tree, mtimes included
(whole seconds: SFTP v3 carries no more)."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import pytest
from _runs import append, record, write_run

from sync_gateway.airgap.export import export
from sync_gateway.airgap.importer import import_bundles, mirror_roots
from sync_gateway.settings import Settings
from sync_gateway.sinks.memory import MemorySink
from sync_gateway.sources.sftp.source import SftpSource

pytestmark = pytest.mark.sshd


def _tree(top: str) -> Dict[str, Tuple[bytes, int]]:
    out = {}
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and not name.startswith(".tmp-"):
                out[os.path.relpath(path, top)] = (open(path, "rb").read(), os.stat(path).st_mtime_ns // 10**9)
    return out


def _bundles(d: str) -> List[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".bundle") and not n.startswith("."))


def test_an_export_of_an_sftp_root_mirrors_the_remote_files(sshd, tmp_path, no_agent):
    remote, out = tmp_path / "remote", tmp_path / "out"
    remote.mkdir()
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not export")
    run = write_run(str(remote), "p", "big", history_rows=3000, finished=False, pad_bytes=40)
    write_run(str(remote), "p", "done", history_rows=50)
    os.symlink(str(secret), os.path.join(run, "files", "leak.txt"))
    ex = Settings(roots=[], state_dir=str(tmp_path / "ex"), bundle_max_bytes=64 << 10)
    im = Settings(server_url="http://unused.invalid", state_dir=str(tmp_path / "im"))

    def sftp() -> SftpSource:   # export closes its sources: a new one per export
        return SftpSource(sshd.url(str(remote)), known_hosts=sshd.known_hosts, identity_file=sshd.identity_file,
                          ssh_config=os.devnull, io_timeout_s=20.0)

    first = export(ex, str(out), sources=[sftp()])
    assert first.ok and len(first.bundles) >= 3, first.errors   # 64 KiB bundles: split
    sink = MemorySink()
    assert import_bundles(im, _bundles(str(out)), sink=sink).ok
    (mirror,) = mirror_roots(im)
    want = _tree(str(remote))
    assert _tree(mirror) == want and "p/big/files/leak.txt" not in want

    append(os.path.join(run, "history.jsonl"), b"".join(record(i, i, loss=0.5) for i in range(3000, 3100)))
    second = export(ex, str(out), sources=[sftp()])
    assert second.ok and 1 <= len(second.bundles) <= 2
    assert sum(b["data_bytes"] for b in second.bundles) < 20_000   # the new rows, no more
    assert import_bundles(im, _bundles(str(out)), sink=sink).ok
    assert _tree(mirror) == _tree(str(remote))
    (big,) = [k for k in sink.by_sync_id if k.endswith("/p/big")]  # <the cluster's root id>/p/big
    assert len([p for p in sink.stored(big).points if p[1] == "loss"]) == 3100
