"""`uav gpu-check`'s table and exit code (the checks themselves run as `make gpu-check`, in CI: its CPU form)."""

from __future__ import annotations

from typer.testing import CliRunner

from pipelines import gpu_check
from pipelines.cli import app
from pipelines.gpu_check import FORMS, Row, _markdown, _step


def test_a_failing_check_is_a_row_and_the_rest_still_runs():
    rows: list[Row] = []
    assert _step(rows, "fine", lambda: "ok") is True
    assert _step(rows, "broken", lambda: 1 / 0) is False
    assert [(r.check, r.ok) for r in rows] == [("fine", True), ("broken", False)]
    assert "ZeroDivisionError" in rows[1].detail
    rows.append(Row("store writer ÷ donor output MB/s", None, 0.0, "writer 300 vs 30", 10.0))
    md = _markdown(rows, "cpu", 0, 12.0)
    assert "small CPU form" in md and "| broken | **FAIL** |" in md and "| **10.00** |" in md


def test_the_command_exits_1_when_a_check_failed(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "run_gpu_check", lambda out, form: [Row("x", False, 1.0, "boom")])
    assert CliRunner().invoke(app, ["gpu-check", "--out", str(tmp_path)]).exit_code == 1
    monkeypatch.setattr(gpu_check, "run_gpu_check", lambda out, form: [Row("x", True, 1.0, "fine")])
    assert CliRunner().invoke(app, ["gpu-check", "--out", str(tmp_path)]).exit_code == 0


def test_the_cpu_form_is_small_and_the_cuda_form_is_the_real_check():
    cpu, cuda = FORMS["cpu"], FORMS["cuda"]
    assert cpu.texts and cpu.texts <= 64 and round(150 * cpu.steps_factor) <= 10 and cpu.bench_scale is None
    assert cuda.texts is None and cuda.steps_factor == 10 and cuda.eval_limit and cuda.bench_scale
