"""bench/_results.py: the results file the CPU benchmarks share keeps every part and every measured row
when parts are saved one at a time, from separate processes at once, or over a broken file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _results():
    spec = importlib.util.spec_from_file_location("bench_results", REPO / "bench" / "_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parts_and_rows_of_earlier_runs_are_kept(tmp_path):
    r = _results()
    out = tmp_path / "bench.json"
    r.save_part(out, "matrix", {"pairs": {"a->b": {"psnr": 20.0}, "a->c": {"psnr": 21.0}}}, merge="pairs")
    r.save_part(out, "teachers", {"runs": {"a": {"psnr": 25.0}}})
    saved = r.save_part(out, "matrix", {"pairs": {"a->c": {"psnr": 22.0}, "b->a": {"psnr": 23.0}}}, merge="pairs")
    on_disk = json.loads(out.read_text())
    assert on_disk == saved
    assert on_disk["parts"]["matrix"]["pairs"] == {"a->b": {"psnr": 20.0}, "a->c": {"psnr": 22.0}, "b->a": {"psnr": 23.0}}
    assert on_disk["parts"]["teachers"]["runs"] == {"a": {"psnr": 25.0}}
    assert {"date", "machine"} <= set(on_disk["parts"]["teachers"]) and "torch_threads" in on_disk["machine"]
    # without merge, a part is replaced whole
    r.save_part(out, "matrix", {"pairs": {"x->y": {}}})
    assert list(json.loads(out.read_text())["parts"]["matrix"]["pairs"]) == ["x->y"]


def test_a_broken_file_is_reported_and_replaced(tmp_path, capsys):
    r = _results()
    out = tmp_path / "bench.json"
    out.write_text("{not json")
    assert r.load(out) == {"parts": {}}
    assert "not valid JSON" in capsys.readouterr().out
    r.save_part(out, "p", {"v": 1})
    assert json.loads(out.read_text())["parts"]["p"]["v"] == 1


WRITER = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("bench_results", sys.argv[1])
r = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r)
for i in range(10):
    r.save_part(Path(sys.argv[2]), "matrix", {"pairs": {f"{sys.argv[3]}-{i}": {"i": i}}}, merge="pairs")
"""


def test_two_processes_saving_at_once_lose_nothing(tmp_path):
    out = tmp_path / "bench.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(REPO / "bench" / "_results.py"), str(out), str(k)])
             for k in range(2)]
    assert all(p.wait(120) == 0 for p in procs)
    assert len(json.loads(out.read_text())["parts"]["matrix"]["pairs"]) == 20
