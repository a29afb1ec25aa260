"""SFTP source against the local file system, measured in the same run on the same files.

1. A no-change pass over N remote runs: ``list_runs`` + ``scan`` of every run (what a pass costs when
   nothing changed), over SFTP with a warm connection, with a cold one (connect included), and locally.
2. Reading one large run: ``read_range`` in cursor-sized chunks over SFTP vs locally, in MB/s and
   records/s (complete lines).

Starts its own sshd with scripts/sshd/start.sh (ports 2222/2223, or SSHD_PORT / SSHD_BASTION_PORT) unless
--state names a running one. Usage: python benchmarks/bench_sftp.py [--runs 1000] [--mb 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sync_gateway.readers.hpc.discovery import discover_hpc  # noqa: E402
from sync_gateway.records import RunRef  # noqa: E402
from sync_gateway.sources.base import Source  # noqa: E402
from sync_gateway.sources.sftp.source import SftpSource  # noqa: E402

try:  # the gateway's local source, when it is on this branch
    from sync_gateway.sources.local import LocalSource
except ImportError:  # pragma: no cover - before the gateway branch lands
    LocalSource = None


def _document(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def make_runs(root: str, count: int, projects: int = 10) -> None:
    for i in range(count):
        run_dir = os.path.join(root, f"proj{i % projects}", f"run{i:05d}")
        os.makedirs(run_dir)
        _document(os.path.join(run_dir, "run.json"), {"format_version": "1.0", "id": f"run{i:05d}",
                                                      "project": f"proj{i % projects}", "attempt": 1,
                                                      "created_ms": 1764150000000})
        _document(os.path.join(run_dir, "config.json"), {"lr": 0.1})
        _document(os.path.join(run_dir, "summary.json"), {"values": {"loss": 0.1}})
        _document(os.path.join(run_dir, "heartbeat.json"), {"ts_ms": 0, "attempt": 1})
        _document(os.path.join(run_dir, "exit.json"), {"attempt": 1, "exit_code": 0, "reason": "finished"})
        with open(os.path.join(run_dir, "history.jsonl"), "w") as f:
            for s in range(20):
                f.write(json.dumps({"seq": s, "step": s, "ts_ms": s, "values": {"loss": 1.0 / (s + 1)}}) + "\n")
        with open(os.path.join(run_dir, "output.log"), "w") as f:
            f.write("epoch 1\n")
        os.makedirs(os.path.join(run_dir, "files", "ckpt"))
        with open(os.path.join(run_dir, "files", "ckpt", "model.pt"), "wb") as f:
            f.write(b"w" * 100)
        os.makedirs(os.path.join(run_dir, "code"))
        with open(os.path.join(run_dir, "code", "diff.patch"), "w") as f:
            f.write("--- a\n+++ b\n")


def make_large_run(root: str, megabytes: int) -> int:
    run_dir = os.path.join(root, "big", "large")
    os.makedirs(run_dir)
    _document(os.path.join(run_dir, "run.json"), {"format_version": "1.0", "id": "large", "attempt": 1})
    target = megabytes * 1024 * 1024
    records = 0
    with open(os.path.join(run_dir, "history.jsonl"), "w") as f:
        size = 0
        while size < target:
            line = json.dumps({"seq": records, "step": records, "ts_ms": 1764150000000 + records,
                               "values": {"loss": 1.0 / (records + 1), "acc": records / 1e6, "lr": 0.1}}) + "\n"
            f.write(line)
            size += len(line)
            records += 1
    return records


class _PlainLocal(Source):
    """Fallback baseline when the gateway's LocalSource is not on this branch: os.scandir + stat."""

    def __init__(self, root: str):
        self.root = root
        self.display = root

    def list_runs(self):
        for p in os.scandir(self.root):
            if p.is_dir(follow_symlinks=False):
                for r in os.scandir(p.path):
                    if r.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(r.path, "run.json")):
                        yield RunRef(p.name, r.name, r.path)

    def scan(self, run):
        from sync_gateway.records import FileStat

        return {e.name: FileStat(e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(run.location)
                if e.is_file(follow_symlinks=False)}

    def walk(self, run, subdir):
        return {}

    def read_range(self, run, name, offset, length):
        with open(os.path.join(run.location, name), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def read_document(self, run, name):
        return self.read_range(run, name, 0, 1 << 30)


def local_source(root: str) -> Source:
    return LocalSource(root) if LocalSource is not None else _PlainLocal(root)


def no_change_pass(src: Source) -> int:
    files = 0
    for run in discover_hpc(src):
        files += len(src.scan(run))
    return files


def gateway_pass(src: Source) -> int:
    """What the gateway's pass asks of a source for an unchanged run: scan, then walk files/ and code/."""
    files = 0
    for run in discover_hpc(src):
        files += len(src.scan(run)) + len(src.walk(run, "files")) + len(src.walk(run, "code"))
    return files


def gateway_no_change(work: str, root: str, make_source: Callable[[], Source], label: str) -> float:
    """Seconds of a real gateway pass (sync_gateway Runner, a fresh one as cron starts) when nothing
    changed, after a first pass recorded everything."""
    from sync_gateway.engine.runner import Runner
    from sync_gateway.settings import Settings
    from sync_gateway.sinks.memory import MemorySink

    settings = Settings(roots=[root], server_url="http://unused.invalid",
                        state_dir=os.path.join(work, f"state-{label}"))
    sink = MemorySink()  # accepts the first pass; the timed pass must not call it
    with Runner(settings, sink=sink, sources=[make_source()]) as runner:
        runner.run_pass()
    sink.calls.clear()
    with Runner(settings, sink=sink, sources=[make_source()]) as runner:
        t0 = time.perf_counter()
        report = runner.run_pass()
        elapsed = time.perf_counter() - t0
    assert report.ok and report.runs_synced == 0 and not sink.calls, (
        f"not a no-change pass: {len(report.errors)} errors (first: {next(iter(report.errors.items()), None)}), "
        f"{report.runs_synced} synced, {sum(sink.calls.values())} sink calls")
    return elapsed


def read_all(src: Source, chunk_bytes: int) -> Dict[str, float]:
    (run,) = [r for r in discover_hpc(src) if r.project == "big"]
    size = src.scan(run)["history.jsonl"].size_bytes
    cursor = records = 0
    while cursor < size:
        data = src.read_range(run, "history.jsonl", cursor, min(chunk_bytes, size - cursor))
        complete = data[: data.rfind(b"\n") + 1]
        records += complete.count(b"\n")
        cursor += len(complete)
    return {"bytes": cursor, "records": records}


def timed(fn: Callable[[], object], repeat: int) -> List[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--mb", type=int, default=64, help="size of the large run's history.jsonl")
    ap.add_argument("--chunk-mb", type=float, default=4.0, help="read_range length per call (a cursor step)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--state", help="state dir of an sshd already started with scripts/sshd/start.sh")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="bench-sftp-")
    state = args.state or os.path.join(work, "sshd")
    started = False
    try:
        if not args.state:
            subprocess.run([os.path.join(REPO, "scripts/sshd/start.sh"), state], check=True,
                           stdout=subprocess.DEVNULL)
            started = True
        env = dict(line.split("=", 1) for line in open(os.path.join(state, "env")).read().splitlines() if "=" in line)
        many, large = os.path.join(work, "many"), os.path.join(work, "large")
        t0 = time.perf_counter()
        make_runs(many, args.runs)
        records_on_disk = make_large_run(large, args.mb)
        print(f"setup: {args.runs} runs + a {args.mb} MB run ({records_on_disk} records) in "
              f"{time.perf_counter() - t0:.1f} s; sftp via {env['SSHD_USER']}@127.0.0.1:{env['SSHD_PORT']}")

        def sftp(root: str) -> SftpSource:
            return SftpSource(f"ssh://{env['SSHD_USER']}@127.0.0.1:{env['SSHD_PORT']}{root}",
                              known_hosts=env["SSHD_KNOWN_HOSTS"], identity_file=env["SSHD_IDENTITY_FILE"],
                              ssh_config=os.devnull)

        # -- 1. no-change pass over many runs
        local = local_source(many)
        remote = sftp(many)
        assert no_change_pass(local) == no_change_pass(remote), "the sources disagree"
        t_local = timed(lambda: no_change_pass(local), args.repeat)
        t_warm = timed(lambda: no_change_pass(remote), args.repeat)

        def cold():
            remote.close()
            no_change_pass(remote)

        t_cold = timed(cold, args.repeat)
        m_local, m_warm, m_cold = (statistics.median(t) for t in (t_local, t_warm, t_cold))
        print(f"\nno-change pass over {args.runs} runs (list_runs + scan each), median of {args.repeat}:")
        print(f"  local ({type(local).__name__}) {m_local * 1000:8.1f} ms")
        print(f"  sftp, warm connection   {m_warm * 1000:8.1f} ms   = {m_warm / m_local:5.1f} x local   "
              f"({m_warm / args.runs * 1e6:.0f} us per run)")
        print(f"  sftp, connect included  {m_cold * 1000:8.1f} ms   = {m_cold / m_local:5.1f} x local")
        if LocalSource is not None:   # walk of the plain fallback is empty: compare only the real one
            assert gateway_pass(local) == gateway_pass(remote), "the sources disagree (walk)"
        g_local = statistics.median(timed(lambda: gateway_pass(local), args.repeat))
        g_remote = statistics.median(timed(lambda: gateway_pass(remote), args.repeat))
        remote.close()
        print(f"same, as the gateway asks (+ walk files/ and code/), median of {args.repeat}:")
        print(f"  local                   {g_local * 1000:8.1f} ms")
        print(f"  sftp, warm connection   {g_remote * 1000:8.1f} ms   = {g_remote / g_local:5.1f} x local   "
              f"({g_remote / args.runs * 1e6:.0f} us per run)")

        try:
            import sync_gateway.engine.runner  # noqa: F401
        except ImportError:
            print("(the gateway's pass loop is not on this branch: its no-change pass is not measured)")
        else:
            g_local = gateway_no_change(work, many, lambda: local_source(many), "local")
            g_remote = gateway_no_change(work, sftp(many).display, lambda: sftp(many), "sftp")
            print("the gateway's own no-change pass (Runner.run_pass, connect included), one run each:")
            print(f"  local                   {g_local * 1000:8.1f} ms")
            print(f"  sftp                    {g_remote * 1000:8.1f} ms   = {g_remote / g_local:5.1f} x local")

        # -- 2. throughput of a large run
        chunk = int(args.chunk_mb * 1024 * 1024)
        local = local_source(large)
        remote = sftp(large)
        res_local = read_all(local, chunk)
        res_remote = read_all(remote, chunk)
        assert res_local == res_remote and res_local["records"] == records_on_disk, (res_local, res_remote)
        t_local = timed(lambda: read_all(local, chunk), args.repeat)
        t_remote = timed(lambda: read_all(remote, chunk), args.repeat)
        remote.close()
        m_local, m_remote = statistics.median(t_local), statistics.median(t_remote)
        mb = res_local["bytes"] / 1e6
        print(f"\nreading a {mb:.0f} MB run ({res_local['records']} records) in {args.chunk_mb:g} MiB read_range "
              f"calls, median of {args.repeat}:")
        print(f"  local  {mb / m_local:8.1f} MB/s  {res_local['records'] / m_local:12,.0f} records/s")
        print(f"  sftp   {mb / m_remote:8.1f} MB/s  {res_local['records'] / m_remote:12,.0f} records/s   "
              f"= {m_local / m_remote:.3f} of local")
        return 0
    finally:
        if started:
            subprocess.run([os.path.join(REPO, "scripts/sshd/stop.sh"), state], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
