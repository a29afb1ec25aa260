"""The run format on the compute side: round trips, non-finite numbers, torn tails, versions."""
from __future__ import annotations

import json
import math
import os

import pytest

import hpc
from hpc import _format as fmt
from hpc._reader import read_history
from hpc.errors import FormatVersionError


def test_non_finite_values_are_written_as_strings_and_read_back():
    line = fmt.encode_values({"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5, "e": [1.0, math.nan]})
    assert json.loads(line) == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.5, "e": [1.0, "NaN"]}
    back = fmt.decode_value(json.loads(line))
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == -math.inf
    assert back["d"] == 1.5 and math.isnan(back["e"][1])
    assert "NaN" not in fmt.encode_values({"x": 1.0})  # strict JSON: no bare NaN literal ever


def test_history_round_trip_through_the_sdk(root):
    values = [0.1, 1e-300, 1e300, -0.0, 12345678901234567890, True, "text", math.nan, math.inf, -math.inf]
    run = hpc.init(project="p", dir=root)
    for v in values:
        run.log({"v": v})
    run.finish()
    with open(os.path.join(run.dir, fmt.HISTORY), "rb") as f:
        for line in f:
            json.loads(line)  # every line is standard JSON
    got = [r["values"]["v"] for r in read_history(run.dir)]
    assert got[:7] == values[:7]
    assert math.isnan(got[7]) and got[8] == math.inf and got[9] == -math.inf
    records = list(read_history(run.dir))
    assert [r["seq"] for r in records] == list(range(len(values)))
    assert [r["step"] for r in records] == list(range(len(values)))
    assert all(isinstance(r["ts_ms"], int) and r["ts_ms"] > 1_600_000_000_000 for r in records)


def test_repair_torn_tail_cuts_only_the_unfinished_line(tmp_path):
    path = tmp_path / "history.jsonl"
    good = b'{"seq":0,"step":0,"ts_ms":1,"values":{"a":1}}\n{"seq":1,"step":5,"ts_ms":2,"values":{"a":2}}\n'
    path.write_bytes(good + b'{"seq":2,"step":6,"ts_ms":3,"val')
    record, cut = fmt.repair_torn_tail(str(path))
    assert path.read_bytes() == good
    assert cut == len(b'{"seq":2,"step":6,"ts_ms":3,"val')
    assert record["seq"] == 1 and record["step"] == 5


def test_repair_finds_last_valid_record_behind_a_corrupt_line_and_long_tail(tmp_path):
    path = tmp_path / "history.jsonl"
    lines = [json.dumps({"seq": i, "step": i, "ts_ms": 1, "values": {"x": "y" * 500}}) for i in range(300)]
    path.write_text("\n".join(lines) + "\nnot json at all\n")
    record, cut = fmt.repair_torn_tail(str(path), chunk_bytes=64)
    assert cut == 0 and record["seq"] == 299


def test_repair_of_a_file_with_no_complete_line_empties_it(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"seq":0,"st')
    assert fmt.repair_torn_tail(str(path)) == (None, 12)
    assert path.read_bytes() == b""


def test_resume_repairs_a_torn_tail_and_continues_seq_and_step(root):
    run = hpc.init(project="p", id="torn", dir=root)
    for i in range(3):
        run.log({"a": i})
    run.finish()
    path = os.path.join(run.dir, fmt.HISTORY)
    with open(path, "ab") as f:
        f.write(b'{"seq":3,"step":3,"ts_ms":17,"values":{"a":')  # a writer killed mid-line
    run = hpc.init(project="p", id="torn", dir=root, resume="allow")
    assert run.step == 3
    run.log({"a": 3})
    run.finish()
    data = open(path, "rb").read()
    assert data.endswith(b"\n") and b'"values":{"a":{' not in data
    records = list(read_history(run.dir))
    assert [r["seq"] for r in records] == [0, 1, 2, 3]
    assert [r["values"]["a"] for r in records] == [0, 1, 2, 3]


def test_unknown_major_version_is_refused_with_a_clear_message(root):
    run = hpc.init(project="p", id="v2", dir=root)
    run.finish()
    meta_path = os.path.join(run.dir, fmt.RUN_JSON)
    meta = json.load(open(meta_path))
    meta["format_version"] = "2.0"
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(FormatVersionError, match=r"version 2\.0 is not supported .*reads 1\.x"):
        hpc.init(project="p", id="v2", dir=root, resume="allow")
    meta["format_version"] = "1.7"  # a newer minor version only adds optional fields
    json.dump(meta, open(meta_path, "w"))
    hpc.init(project="p", id="v2", dir=root, resume="allow").finish()


def test_atomic_write_leaves_no_temp_file_and_replaces_whole(tmp_path):
    path = str(tmp_path / "doc.json")
    fmt.atomic_write_json(path, {"a": 1})
    fmt.atomic_write_json(path, {"b": math.nan})
    assert json.load(open(path)) == {"b": "NaN"}
    assert os.listdir(tmp_path) == ["doc.json"]


def test_the_c_encoder_is_used_only_while_its_private_signature_holds(monkeypatch):
    """hpc._format calls CPython's private json.encoder.c_make_encoder positionally; a Python whose
    signature differs must fall back to the public encoder, not fail to import or write wrong JSON."""
    import json.encoder

    from hpc import _format

    assert _format._c_encoder() is not None  # CPython here: the fast path is in use

    def changed_signature(*args):
        raise TypeError("c_make_encoder() takes exactly 10 arguments (9 given)")

    monkeypatch.setattr(json.encoder, "c_make_encoder", changed_signature)
    assert _format._c_encoder() is None

    def wrong_output(*args):
        return lambda obj, level: ["{}"]

    monkeypatch.setattr(json.encoder, "c_make_encoder", wrong_output)
    assert _format._c_encoder() is None


def test_a_name_with_a_trailing_newline_is_not_a_run_name(tmp_path):
    """'$' matches before a trailing newline: the rule must hold for the whole name (both halves)."""
    from hpc import _format, _reader
    from hpc.errors import UsageError

    assert _format.is_name("run1") and not _format.is_name("run\n") and not _format.is_name("a/b")
    with pytest.raises(UsageError):
        import hpc

        hpc.init(project="p", id="run\n", dir=str(tmp_path))
    (tmp_path / "p" / "run\n").mkdir(parents=True)
    (tmp_path / "p" / "run\n" / "run.json").write_text('{"format_version": "1.0", "id": "x", "project": "p"}')
    assert list(_reader.iter_runs(str(tmp_path))) == []
