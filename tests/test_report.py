"""report.py on synthetic results: aggregates come from metrics.aggregate over hand-made rows, never typed in."""

from __future__ import annotations

import json
import math
from pathlib import Path

from uav_eval import metrics
from uav_eval import report
from uav_eval.report import bar_check, compare, summary_table, write_report
from uav_eval.tables import fmt_params
from uav_eval.results import Results

SOURCES = {"classification": "sst2", "fact": "trivia", "gist": "wiki"}


def _rows(method: str, task: str, f1s: list[float]) -> list[dict]:
    rows = []
    for i, f1 in enumerate(f1s):
        row = {"method": method, "row": i, "source": SOURCES[task], "task": task, "question": f"Q{i} about {task}?",
               "gold": f"gold {i}", "raw": f"pred {i}", "pred": f"pred {i} | piped " + "x" * 200 * (i == 0),
               "f1": f1, "em": float(f1 == 1.0), "mention": float(f1 > 0.5), "rougeL": f1 / 2, "sim": math.nan,
               "rougeL_input": 0.1 if method == "uav" else 0.6}
        if task == "classification":
            row["acc"] = float(f1 > 0.5)
        rows.append(row)
    return rows


HIGH = [0.9, 1.0, 0.95, 0.85, 0.9, 1.0]
LOW = [0.1, 0.0, 0.05, 0.15, 0.1, 0.0]
MID = [0.4, 0.6, 0.5, 0.45, 0.55, 0.5]


def _results(f1: dict[str, dict[str, list[float]]], run: str = "/runs/demo", **kw) -> Results:
    """results as protocol.evaluate builds them; `f1` maps method -> task -> per-item F1s."""
    rows = [r for m, tasks in f1.items() for t, vs in tasks.items() for r in _rows(m, t, vs)]
    agg = {"by_task": metrics.aggregate(rows, metrics.METRIC_KEYS, ["method", "task"], n_boot=200),
           "by_source": metrics.aggregate(rows, metrics.METRIC_KEYS, ["method", "source"], n_boot=200)}
    return Results.from_dict({
        "run": run, "store": "/stores/s", "split": "test", "donor": "org/donor-1b", "decoder": "org/dec-0.5b",
        "adapter": kw.get("adapter", "mlp"), "lora": kw.get("lora", "trained"),
        "trainable_params": {"adapter": 5_300_000, "lora": 577}, "n_items": len(rows) // len(f1),
        "methods": list(f1), "config": {}, "aggregates": agg, "items": rows, "seconds": 12.3})


def _passing() -> Results:
    return _results({"uav": {t: HIGH for t in SOURCES}, "no_soft": {t: LOW for t in SOURCES},
                     "input_text": {t: MID for t in SOURCES}})


def test_write_report_files_and_numbers(tmp_path: Path) -> None:
    res = _passing()
    write_report(res, tmp_path)
    for name in ("results.json", "report.md", "eval_tasks.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "eval_tasks.png").read_bytes()[:4] == b"\x89PNG"
    back = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN similarity became null
    assert back["items"][0]["sim"] is None
    md = (tmp_path / "report.md").read_text()
    s = res.aggregates["by_task"]["uav/classification"]["f1"]
    assert round(s["mean"], 2) == 0.93  # hand mean of HIGH
    cell = f"{s['mean']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"
    uav_row = next(line for line in md.splitlines() if line.startswith("| uav | ") and "[" in line)
    assert uav_row.split(" | ")[1] == cell
    assert "5.3M / 577" in md and "org/donor-1b` → `org/dec-0.5b" in md
    assert "**Overall: PASS**" in md and "**FAIL**" not in md
    assert "ROUGE-L" in md and "accuracy" in md and "trivia" in md
    m = res.aggregates["by_task"]["uav/overall"]["mention"]
    assert m["mean"] == 1.0 and "| uav | answer mentioned | 1.00 [1.00, 1.00]" in md  # every HIGH F1 is > 0.5
    assert "pred 0 \\| piped" in md and "…" in md  # escaped pipe, truncated long prediction
    assert "inversion ceiling" in md  # legend
    table = summary_table(res)
    assert "classification" in table and cell in table


def test_results_round_trip_results_json_and_load_older_files(tmp_path: Path) -> None:
    res = _passing()
    res.save(tmp_path / "results.json")
    doc = json.loads((tmp_path / "results.json").read_text())
    assert list(doc) == list(res.to_dict()) and Results.load(tmp_path).to_dict() == doc
    old = {k: v for k, v in doc.items() if k not in ("readout", "layers", "probe", "dataset_fingerprint")}
    back = Results.from_dict({**old, "reading": None, "gone": 1})  # results from before these keys existed
    assert back.readout == "last" and back.layers == [] and back.reading == {} and back.probe == {}
    assert summary_table(back) == summary_table(res)


def test_bar_check_pass_and_overlap() -> None:
    checks = {c["task"]: c for c in bar_check(_passing())}
    assert set(checks) == set(SOURCES)
    assert all(c["pass"] and c["beats_no_soft"] for c in checks.values())
    assert checks["classification"]["f1_ok"] is True and checks["fact"]["f1_ok"] is None
    assert checks["fact"]["uav_ci"][0] > checks["fact"]["no_soft_ci"][1]

    overlap = _results({"uav": {t: MID for t in SOURCES}, "no_soft": {t: [v + 0.02 for v in MID] for t in SOURCES}})
    checks = bar_check(overlap)
    assert checks and not any(c["beats_no_soft"] or c["pass"] for c in checks)


def test_classification_threshold() -> None:
    # uav clearly above no_soft everywhere, but classification F1 ~0.5 < 0.8
    res = _results({"uav": {t: MID for t in SOURCES}, "no_soft": {t: LOW for t in SOURCES}})
    checks = {c["task"]: c for c in bar_check(res)}
    assert checks["classification"]["beats_no_soft"] and checks["classification"]["f1_ok"] is False
    assert not checks["classification"]["pass"] and checks["fact"]["pass"] and checks["gist"]["pass"]
    assert "**Overall: FAIL** (failing: classification)" in report._report_md(res, "eval_tasks.png")


def test_missing_methods_tolerated(tmp_path: Path) -> None:
    res = _results({"uav": {t: HIGH for t in SOURCES}})  # no no_soft, no input_text, no selfie
    res.methods = ["uav", "no_soft", "selfie"]  # listed but never aggregated
    write_report(res, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "no_soft was not run" in md and "FAIL" in md
    assert not any(c["pass"] for c in bar_check(res))


def test_compare_two_runs(tmp_path: Path) -> None:
    a, b = tmp_path / "self_mlp", tmp_path / "cross_linear"
    runs = {a: _passing(), b: _results({"uav": {t: MID for t in SOURCES}, "no_soft": {t: LOW for t in SOURCES}},
                                       run=str(b), adapter="linear", lora="frozen from self_mlp")}
    for d, res in runs.items():  # results.json as write_report leaves it, without paying for its plot
        d.mkdir()
        res.save(d / "results.json")
    out = tmp_path / "cmp"
    table = compare([a, b], out)
    lines = table.splitlines()
    assert len(lines) == 4 and "self_mlp" in lines[2] and "cross_linear" in lines[3]
    assert "frozen from self_mlp" in lines[3] and "uav overall" in lines[0] and "uav mentioned" in lines[0]
    assert lines[3].rstrip(" |").endswith("0.00 [0.00, 0.00]")  # no_soft (LOW F1s) mentions nothing
    assert (out / "compare.md").read_text().count("cross_linear") == 1
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_fmt_params() -> None:
    assert [fmt_params(n) for n in (0, 577, 12_345, 5_300_000, 1_200_000_000)] == ["0", "577", "12.3K", "5.3M", "1.2B"]


def test_the_runs_own_evaluation_writes_a_model_card_and_plain_peft_loads_its_lora(tiny_runs, tiny_llama_dir, tmp_path):
    """RUN/README.md: donor, decoder, both adapter branches, data, the evaluation with shuffled and the input_text
    ceiling, how to load it; written for the run's own test split only. Its lora/ loads with plain peft and gives the
    decoder the Verbalizer runs."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from uav_eval.protocol import EvalConfig, evaluate
    from uav_train.run import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["tokens"], run)
    quick = dict(run=str(run), limit=2, methods=["uav", "shuffled", "no_soft", "input_text"], similarity=False,
                 probe=False, n_boot=20, progress=False)
    res = evaluate(EvalConfig(**quick))
    card = (run / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    report = res.file("report", "md").name  # report-limit2-<settings>.md: not the standard controls
    for part in ("| donor (the model it reads) |", "`model.layers.2`", "token vectors of `model.layers.1`",
                 "| adapter, pooled branch | `mlp` (", "| adapter, tokens branch | `pervector` (", "store dataset `things`",
                 "uav − shuffled", "| input_text |", "every question of at most 2 texts per source", f"[{report}]({report})",
                 'Verbalizer.load("run")', 'v.ask({"model.layers.2": h2, "model.layers.1": h1}',
                 'PeftModel.from_pretrained(base, "run/lora")'):
        assert part in card, part
    val = evaluate(EvalConfig(**quick, split="val"))
    assert val.folder() != run and not (val.folder() / "README.md").exists()
    assert (run / "README.md").read_text() == card  # another split leaves the run's card alone

    ids = torch.tensor([[3, 17, 42, 9, 11]])
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)), str(run / "lora"))
    ours = load_run(run).model
    with torch.no_grad():
        assert torch.allclose(plain.eval()(ids).logits, ours(ids).logits, atol=1e-6)
