"""Image, Table, Histogram in log(): packed into media.bin + media.jsonl (docs/run-format.md section 8)."""
from __future__ import annotations

import io
import json
import os
import zlib

from compat_support import need_packages

import hpc


def media(run_dir):
    with open(os.path.join(run_dir, "media.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    with open(os.path.join(run_dir, "media.bin"), "rb") as f:
        packed = f.read()
    return [(r["step"], r["values"], packed[r["values"]["offset"]:r["values"]["offset"] + r["values"]["length"]])
            for r in lines]


def history(run_dir):
    with open(os.path.join(run_dir, "history.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def png_pixels(data):
    """Decode the PNGs hpc writes (8-bit, filter 0) with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[header[9]]
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    return width, height, channels, b"".join(raw[r * stride + 1:(r + 1) * stride] for r in range(height))


def test_every_media_type_is_packed_into_one_file(tmp_path):
    need_packages("numpy", "PIL", "torch")
    import numpy as np
    import PIL.Image
    import torch

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    PIL.Image.fromarray(np.full((2, 2, 3), 200, dtype=np.uint8)).save(tmp_path / "file.png")
    run = hpc.init(project="p", dir=str(tmp_path / "runs"))
    run.log({"loss": 1.0, "img": hpc.Image(grey, caption="grey")})
    run.log({"samples": [hpc.Image(torch.zeros(3, 5, 6)), hpc.Image(PIL.Image.new("RGB", (7, 2), "red"))],
             "eval/table": hpc.Table(columns=["text", "score"], data=[["a", 0.5], ["b", np.float32(2)]]),
             "weights": hpc.Histogram(torch.arange(10.0), num_bins=5),
             "from_file": hpc.Image(str(tmp_path / "file.png"))})
    grey[:] = 0  # changed after log(): the image was copied
    run.finish()
    records = media(run.dir)
    assert [(s, v["key"], v["kind"]) for s, v, _ in records] == [
        (0, "img", "image"), (1, "samples", "image"), (1, "samples", "image"), (1, "eval/table", "table"),
        (1, "weights", "histogram"), (1, "from_file", "image")]
    assert png_pixels(records[0][2]) == (4, 3, 1, bytes(range(12))) and records[0][1]["caption"] == "grey"
    assert png_pixels(records[1][2])[:3] == (6, 5, 3)  # a tensor is channels first
    assert PIL.Image.open(io.BytesIO(records[2][2])).size == (7, 2)
    assert json.loads(records[3][2]) == {"columns": ["text", "score"], "data": [["a", 0.5], ["b", 2.0]]}
    assert json.loads(records[4][2]) == {"bins": [0.0, 1.8, 3.6, 5.4, 7.2, 9.0], "counts": [2, 2, 2, 2, 2]}
    assert records[5][2] == (tmp_path / "file.png").read_bytes()
    paths = [v["path"] for _, v, _ in records]
    assert len(set(paths)) == len(paths) and paths[3].startswith("media/tables/eval/table/1-")
    rows = history(run.dir)
    assert [r["values"] for r in rows] == [{"loss": 1.0}, {}]  # a row of media only is an empty record
    exit_doc = json.loads((tmp_path / "runs" / "p" / run.id / "exit.json").read_text())
    assert exit_doc["written_rows"] == exit_doc["logged_rows"] == 2
    assert sorted(os.listdir(run.dir)).count("media.bin") == 1


def test_a_bad_media_value_warns_once_and_the_row_is_kept(tmp_path, capsys):
    need_packages("numpy")
    import numpy as np

    run = hpc.init(project="p", dir=str(tmp_path))
    run.log({"loss": 1.0, "img": hpc.Image(np.zeros((2, 2, 7)))})  # 7 channels
    run.log({"loss": 2.0, "obj": hpc.Image(object()), "gone": hpc.Image(str(tmp_path / "missing.png"))})
    run.log({"img": hpc.Image(np.zeros((2, 2, 7)))})  # every value refused: the row is dropped and counted
    run.finish()
    assert [r["values"] for r in history(run.dir)] == [{"loss": 1.0}, {"loss": 2.0}]
    err = capsys.readouterr().err
    assert err.count("dropping key 'img'") == 1 and "not object" in err and "missing.png" in err
    exit_doc = json.loads(open(os.path.join(run.dir, "exit.json")).read())
    assert (exit_doc["logged_rows"], exit_doc["written_rows"], exit_doc["dropped_rows"]) == (3, 2, 1)
