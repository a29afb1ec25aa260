"""Odd values: objects whose conversion raises, and integers a float cannot hold (docs/run-format.md §3)."""
from __future__ import annotations

import json
import os
import sys

import hpc
from hpc import _format as fmt
from hpc._reader import read_history

LIMIT = 2 ** 1024 - 2 ** 970  # the first magnitude float() cannot convert


class ItemRaises:
    def item(self):
        raise ZeroDivisionError("cuda error: device-side assert triggered")


class ShapeRaises:
    @property
    def shape(self):
        raise KeyError("no shape on a meta tensor")


class TolistRaises:
    shape = (3,)

    def tolist(self):
        raise MemoryError


class LenRaises:
    @property
    def shape(self):
        class Weird:
            def __len__(self):
                raise OverflowError("huge")
        return Weird()


class MappingRaises(dict):
    def items(self):
        raise RuntimeError("broken mapping")


def raw_values(run):
    with open(os.path.join(run.dir, fmt.HISTORY), encoding="utf-8") as f:
        return [json.loads(line)["values"] for line in f]


def test_a_value_whose_conversion_raises_drops_that_key_only(root, capsys):
    run = hpc.init(project="p", dir=root)
    run.log({"loss": 0.5, "item": ItemRaises(), "shape": ShapeRaises(), "tolist": TolistRaises(),
             "len": LenRaises(), "nested": {"ok": 1, "bad": ItemRaises()}, "mapping": MappingRaises(a=1)})
    run.log({"loss": 0.25, "item": ItemRaises()})
    run.finish()
    assert [r["values"] for r in read_history(run.dir)] == [{"loss": 0.5, "nested/ok": 1}, {"loss": 0.25}]
    err = capsys.readouterr().err
    assert "internal error" not in err
    assert err.count("dropping key 'item': reading its value raised ZeroDivisionError: cuda error") == 1
    for key, kind in (("shape", "KeyError"), ("tolist", "MemoryError"), ("len", "OverflowError"),
                      ("nested/bad", "ZeroDivisionError"), ("mapping", "RuntimeError")):
        assert f"dropping key '{key}': reading its value raised {kind}" in err
    assert all(len(line) < 300 for line in err.splitlines())  # one line each


def test_integers_beyond_the_float_range_are_written_as_infinities(root):
    run = hpc.init(project="p", dir=root, config={"seed": 10 ** 400})
    run.log({"pos": 10 ** 400, "neg": -(10 ** 400), "limit": LIMIT, "below": LIMIT - 1, "u64": 2 ** 64,
             "vec": [10 ** 400, 1], "digits": 10 ** 5000, "flag": True})
    run.summary["best"] = -(10 ** 999)
    run.finish()
    (values,) = raw_values(run)
    assert values == {"pos": "Infinity", "neg": "-Infinity", "limit": "Infinity", "below": LIMIT - 1,
                      "u64": 2 ** 64, "vec": ["Infinity", 1], "digits": "Infinity", "flag": True}
    assert float(values["below"]) == sys.float_info.max  # what a reader storing doubles gets
    summary = json.load(open(os.path.join(run.dir, fmt.SUMMARY)))
    assert summary["values"]["pos"] == "Infinity" and summary["values"]["best"] == "-Infinity"
    assert json.load(open(os.path.join(run.dir, fmt.CONFIG)))["seed"] == "Infinity"
    (record,) = read_history(run.dir)
    assert record["values"]["pos"] == float("inf") and record["values"]["neg"] == float("-inf")


def test_an_integer_over_the_str_digit_limit_does_not_break_the_encoder():
    """Values reach the encoder converted; this is the encoder's own guard (str() refuses 4300+ digits)."""
    assert json.loads(fmt.encode_values({"v": -(10 ** 5000), "w": 1})) == {"v": "-Infinity", "w": 1}
