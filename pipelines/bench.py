"""`uav bench`: side-by-side ratios for the claims the design makes. Every number is measured against a baseline
in the same run (never against an absolute target), on the real embedded SmolLM2.

1. harvest overhead   harvest tokens/s ÷ bare truncated forward tokens/s (same Capture hooks, no writes)
2. store formats      our Zarr store (raw, the default codec, and zstd) vs safetensors shards vs a `datasets`
                      Arrow dataset vs raw .npy: size, write and read MB/s, random 256-row batches/s
                      (pipelines/store_formats.py)
3. streaming          training step time from the store through ItemStream ÷ from items preloaded in RAM;
                      a full training step ÷ the bare decoder's forward + backward on the same batch
4. memory             peak RSS of a streaming reader over a 10× store ÷ over the 1× store (subprocesses)
5. generation         batched (8) generation tokens/s ÷ batch-1 tokens/s

Every ratio is the median of ROUNDS (≥ 3) interleaved rounds, printed with its min–max: on a shared machine two
runs of one ratio moved by 10–40%, so one round's figure says little, and the range says how much. Within a round
the two sides of a ratio run back to back.

Default sizes fit a busy 2-core CPU in a few minutes; on a GPU box pass ``--scale 10`` (or more) so the
timed regions are long enough to mean something. The measuring kit (timing, rounds, synthetic stores) is
pipelines/measure.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.measure import (ROUNDS, bits_of, ranged, synthetic_rows, timed, with_range,
                               write_synthetic_store)
from pipelines.store_formats import DEFAULT_FORMAT, compare_formats, store_claims
from uav_cache.device import pick_device, resolve_precision
from uav_cache.errors import UavError
from uav_cache.store import DEFAULT_CODEC, Store

D_SYN = 576  # SmolLM2-135M's width: the synthetic rows are shaped like its activations
TARGETS = {"harvest_overhead": ("≥", 0.95), "streaming_step_ratio": ("≤", 1.05), "memory_ratio_10x": ("≤", 1.10),
           "writer_mb_s": ("≥", 300), "batches_vs_arrow": ("≥", 1.0)}


# ---------------------------------------------------------------------------------------------- 1. harvest overhead

def harvest_overhead(model, tok, spec, n_texts: int, work: Path, batch_size: int = 8, shard_rows: int = 32,
                     rounds: int = ROUNDS) -> dict:
    """Tokens/s of a harvest (``harvest.plan`` with the already loaded donor, then ``Job.run`` and finalize: the
    clock covers the donor loop and the writes, not loading and tokenizing) ÷ tokens/s of the same batches through
    the same Capture hooks with nothing written. Each round harvests a new store between two bare passes, whose
    mean is that round's baseline."""
    from tqdm.auto import tqdm

    from uav_cache import harvest as hv

    def plan(r: int):
        return hv.plan(hv.HarvestConfig(donor=spec.name, data="demo", out=str(work / f"harvest-store-{r}"), limit=n_texts,
                                        batch_size=batch_size, shard_rows=shard_rows, chunk_rows=shard_rows,
                                        progress=False), loaded=(model, tok))

    job = plan(0)
    ids, names, pad = job.ids, job.names, tok.pad_token_id or 0
    n_tokens = sum(map(len, ids))

    def bare():
        cap = hv.Capture(model, names)
        try:
            with tqdm(disable=True) as bar:
                for a in range(0, len(ids), shard_rows):
                    hv.forward_shard(model, cap, ids[a:a + shard_rows], names, pad, batch_size, job.dtype, None,
                                     job.device, job.row_ids[a:a + shard_rows], bar)
        finally:
            cap.close()

    def run(j):
        j.run()
        j.writer.finalize()

    bare()  # warm-up (allocator, kernels)
    t_bare, t_harvest = [], []
    for r in range(rounds):
        j = job if r == 0 else plan(r)
        b1, _ = timed(bare)
        t, _ = timed(lambda: run(j))
        b2, _ = timed(bare)
        t_bare.append((b1 + b2) / 2)
        t_harvest.append(t)
    return {"texts": len(ids), "tokens": n_tokens, "harvest_tok_s": n_tokens / float(np.median(t_harvest)),
            "bare_tok_s": n_tokens / float(np.median(t_bare)),
            **with_range("harvest_overhead", [b / h for b, h in zip(t_bare, t_harvest)]),
            "store": str(work / "harvest-store-0")}


# ---------------------------------------------------------------------------------------------- 3. streaming

def streaming_ratio(store: Path, decoder: str, steps: int, work: Path, batch_size: int = 8, rounds: int = ROUNDS) -> dict:
    """Mean time of an adapter-only training step (real decoder forward + backward through the frozen decoder
    into a small MLP adapter) when batches come from ItemStream vs the same batches preloaded in RAM.
    Steps alternate (stream, RAM, stream, …) so load changes on a shared machine hit both sides alike; the steps
    are cut into ``rounds`` rounds, one ratio each."""
    from uav_train.stream import ItemStream
    from uav_train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(stores=[str(store)], out=str(work / "bench-run"), decoder=decoder, adapter="mlp",
                      adapter_options={"k": 4}, no_lora=True, batch_size=batch_size, progress=False)
    tr = Trainer(cfg)
    opt = torch.optim.AdamW(tr.adapter.parameters(), lr=1e-4)
    st = Store(store)

    def step(batch):
        loss = tr.loss(batch, "qa")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ram = [b for _, b in zip(range(steps + 1), ItemStream([st], "train", seed=0).batches(batch_size))]
    stream = ItemStream([Store(store)], "train", seed=0).batches(batch_size)
    step(next(stream))  # warm-up: the stream's first chunk read and the first backward both happen here
    step(ram[0])
    t_stream, t_ram = np.zeros(steps), np.zeros(steps)
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        b = next(stream)
        step(b)
        t_stream[i - 1] = time.perf_counter() - t0
        assert [it.row for it in b] == [it.row for it in ram[i]]  # the same items on both sides
        t_ram[i - 1], _ = timed(lambda: step(ram[i]))
    parts = np.array_split(np.arange(steps), min(rounds, steps))
    return {"steps": steps, "step_s_stream": float(t_stream.mean()), "step_s_ram": float(t_ram.mean()),
            **with_range("streaming_step_ratio", [t_stream[p].sum() / t_ram[p].sum() for p in parts]),
            "proxy": "adapter-only step on the real decoder"}


def train_step_ratio(store: Path, decoder: str, steps: int, work: Path, batch_size: int = 8, rounds: int = ROUNDS) -> dict:
    """A full stage-2 training step (adapter + all-linear LoRA r 8: splice, loss on the answer, backward, clip,
    AdamW) ÷ the bare decoder's forward + backward on the same batch (same embeddings and labels, LoRA bypassed,
    no adapter, no optimizer). What is above 1 is uav's overhead plus the LoRA's own cost. Steps alternate."""
    from uav_train.prompt import collate
    from uav_train.stream import ItemStream
    from uav_train.trainer import TrainConfig, Trainer, answer_loss

    cfg = TrainConfig(stores=[str(store)], out=str(work / "bench-step"), decoder=decoder, adapter="mlp",
                      adapter_options={"k": 4, "center": True}, stage="2", batch_size=batch_size, progress=False)
    tr = Trainer(cfg)
    tr._add_lora()
    params = list(tr.adapter.parameters()) + list(tr.lora_params().values())
    opt = torch.optim.AdamW(params, lr=1e-5)
    batches = [b for _, b in zip(range(steps + 1), ItemStream([Store(store)], "train", seed=0).batches(batch_size))]

    def full(batch):
        loss = tr.loss(batch, "qa")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def bare(batch):
        encs = [tr.template.encode(it.question, it.answer, 4) for it in batch]  # the pooled adapter's k soft tokens
        b = collate(encs, tr.tok.pad_token_id)
        with tr.model.disable_adapter():
            emb = tr.model.get_input_embeddings()(b["input_ids"]).detach().requires_grad_(True)
            answer_loss(tr.model, emb, b["attention_mask"], b["labels"]).backward()

    full(batches[0]), bare(batches[0])  # warm-up
    t_full, t_bare = np.zeros(steps), np.zeros(steps)
    for i, b in enumerate(batches[1:]):
        t_full[i] = timed(lambda: full(b))[0]
        t_bare[i] = timed(lambda: bare(b))[0]
    parts = np.array_split(np.arange(steps), min(rounds, steps))
    return {"steps": steps, "step_s": float(t_full.mean()), "bare_s": float(t_bare.mean()),
            **with_range("train_step_ratio", [t_full[p].sum() / t_bare[p].sum() for p in parts]),
            "tokens_per_batch": sum(len(tr.template.encode(it.question, it.answer, 4).input_ids) for it in batches[1])}


# ---------------------------------------------------------------------------------------------- 4. memory

_READER = textwrap.dedent("""
    import json, resource, sys
    def peak_kb():  # VmHWM is reset by exec; ru_maxrss is not (a child of a big parent starts at its size)
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import torch
    torch.set_num_threads(1)
    from uav_cache.store import DEFAULT_CODEC, Store
    from uav_train.stream import ItemStream, stack_x
    base = peak_kb()
    n = 0
    for batch in ItemStream([Store(sys.argv[1])], "train", mode="text", epochs=1).batches(32):
        stack_x(batch)
        n += len(batch)
    print(json.dumps({"items": n, "base_kb": base, "peak_kb": peak_kb()}))
""")


def peak_rss_of_reader(store: Path) -> dict:
    """Stream every item of a store in a fresh process; its peak RSS in KiB (VmHWM, else ru_maxrss)."""
    r = subprocess.run([sys.executable, "-c", _READER, str(store)], capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(r.stdout.strip().splitlines()[-1])


def memory_ratio(real_rows: np.ndarray, examples: list[dict], n1: int, work: Path, factor: int = 10,
                 rounds: int = ROUNDS) -> dict:
    """Peak RSS streaming a factor× store ÷ a 1× store, each read by a fresh process, the two alternating for
    ``rounds`` rounds. Rows are synthetic-from-real; example records are the real demo records (tiled), since the
    reader holds the examples table in memory."""
    out, paths = {}, {}
    for name, n in (("1x", n1), (f"{factor}x", n1 * factor)):
        paths[name] = work / f"mem-{name}"
        bits = bits_of(synthetic_rows(real_rows, n, seed=1), "fp16")
        ex = [{**examples[i % len(examples)], "id": f"r{i}", "split": "train"} for i in range(n)]
        write_synthetic_store(paths[name], bits, "fp16", examples=ex)
        del bits
        out[name] = {"rows": n}
    ratios, above = [], []
    try:
        for _ in range(rounds):
            a, b = (peak_rss_of_reader(paths[name]) for name in ("1x", f"{factor}x"))
            ratios.append(b["peak_kb"] / a["peak_kb"])
            above.append((b["peak_kb"] - b["base_kb"]) / max(a["peak_kb"] - a["base_kb"], 1))
            out["1x"].update(a)
            out[f"{factor}x"].update(b)
    finally:
        for p in paths.values():
            shutil.rmtree(p, ignore_errors=True)
    out.update(with_range("memory_ratio_10x", ratios))
    out.update(with_range("above_import_ratio", above))
    return out


# ---------------------------------------------------------------------------------------------- 5. generation

def generation_ratio(model, tok, questions: list[str], max_new_tokens: int = 16, batch: int = 8,
                     rounds: int = ROUNDS) -> dict:
    """uav_eval.generate.generate over the same prompts, batch 8 vs one at a time, ``rounds`` times. Tokens are the
    answers' tokens (re-encoded), counted the same way on both sides."""
    from uav_eval.generate import generate
    from uav_train.prompt import PromptTemplate

    tpl = PromptTemplate(tok)
    prompts = [tpl.prompt(q, 0) for q in questions]
    stop = tpl.stop_ids()

    def n_tok(texts):
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    generate(model, tok, prompts[:1], None, stop_ids=stop, max_new_tokens=2)  # warm-up
    r1, rb = [], []
    for _ in range(rounds):
        t1, one = timed(lambda: [a for p in prompts for a in generate(model, tok, [p], None, stop_ids=stop,
                                                                      max_new_tokens=max_new_tokens)])
        tb, many = timed(lambda: [a for i in range(0, len(prompts), batch)
                                  for a in generate(model, tok, prompts[i:i + batch], None, stop_ids=stop,
                                                    max_new_tokens=max_new_tokens)])
        r1.append(n_tok(one) / t1)
        rb.append(n_tok(many) / tb)
    return {"prompts": len(prompts), "batch": batch, "tok_s_batch1": float(np.median(r1)),
            "tok_s_batched": float(np.median(rb)), **with_range("generation_ratio", [b / a for a, b in zip(r1, rb)]),
            "same_answers": sum(a == b for a, b in zip(one, many))}


# ---------------------------------------------------------------------------------------------- 6. merged LoRA

def merged_lora_ratio(model, tok, questions: list[str], steps: int, batch: int = 8, max_new_tokens: int = 16,
                      rounds: int = ROUNDS) -> dict:
    """A frozen LoRA (r 8, all-linear, random so that merging changes the weights) folded into the decoder's
    weights ÷ the same LoRA through peft: the step time of adapter-only transfer (forward + backward into the
    inputs, as the frozen run's adapter needs) and generation time, alternating. Both in the precision a demo run
    picks here (bf16 where the CPU has bf16 units, else fp32). Also how many greedy answers stay
    the same: in bf16, merging rounds W + BA to bf16 once, where peft adds x·A·B in fp32 every step."""
    import copy

    from peft import LoraConfig, get_peft_model

    from uav_cache.models import block_linears
    from uav_eval.generate import generate
    from uav_train.prompt import PromptTemplate

    torch.manual_seed(0)
    precision = resolve_precision("bf16", next(model.parameters()).device)  # the demo recipe's
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    base = copy.deepcopy(model).to(dtype)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=block_linears(base),
                                                 init_lora_weights=False)).eval()
    for p in peft_model.parameters():
        p.requires_grad_(False)
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    tpl = PromptTemplate(tok)
    prompts = [tpl.prompt(q, 0) for q in questions]
    stop = tpl.stop_ids()
    enc = tok(questions[:batch], return_tensors="pt", padding=True)
    emb = model.get_input_embeddings()(enc["input_ids"]).to(dtype).detach()

    def step(m):
        x = emb.clone().requires_grad_(True)
        m(inputs_embeds=x, attention_mask=enc["attention_mask"]).logits.float().logsumexp(-1).mean().backward()

    def gen(m):
        return [a for i in range(0, len(prompts), batch)
                for a in generate(m, tok, prompts[i:i + batch], None, stop_ids=stop, max_new_tokens=max_new_tokens)]

    step(peft_model), step(merged)  # warm-up
    t_peft, t_merged = np.zeros(steps), np.zeros(steps)
    for i in range(steps):
        t_peft[i] = timed(lambda: step(peft_model))[0]
        t_merged[i] = timed(lambda: step(merged))[0]
    g_peft, g_merged = [], []
    for _ in range(rounds):
        tp, a_peft = timed(lambda: gen(peft_model))
        tm, a_merged = timed(lambda: gen(merged))
        g_peft.append(tp), g_merged.append(tm)
    parts = np.array_split(np.arange(steps), min(rounds, steps))
    return {"precision": precision, "steps": steps, "step_s_peft": float(t_peft.mean()), "step_s_merged": float(t_merged.mean()),
            **with_range("merged_step_ratio", [t_merged[p].sum() / t_peft[p].sum() for p in parts]),
            **with_range("merged_generation_ratio", [m / p for p, m in zip(g_peft, g_merged)]),
            "prompts": len(prompts), "same_answers": sum(a == b for a, b in zip(a_peft, a_merged))}


# ---------------------------------------------------------------------------------------------- the run

def _table(results: dict):
    from rich.table import Table

    t = Table(title=f"uav bench (scale {results['scale']}, {results['device']}): median (min–max) of "
                    f"{results.get('rounds', 1)} interleaved rounds")
    for c in ("measurement", "ratio", "target", "details"):
        t.add_column(c)
    h, s, m, g = (results[k] for k in ("harvest", "streaming", "memory", "generation"))
    tgt = lambda k: " ".join(map(str, TARGETS[k])) if k in TARGETS else ""  # noqa: E731
    t.add_row("harvest ÷ bare forward tok/s", ranged(h, "harvest_overhead"), tgt("harvest_overhead"),
              f"{h['harvest_tok_s']:.0f} vs {h['bare_tok_s']:.0f} tok/s, {h['tokens']} tokens")
    t.add_row("stream ÷ RAM step time", ranged(s, "streaming_step_ratio"), tgt("streaming_step_ratio"),
              f"{s['step_s_stream']:.3f} vs {s['step_s_ram']:.3f} s/step, {s['steps']} steps ({s['proxy']})")
    ts = results["train_step"]
    t.add_row("train step ÷ bare decoder fwd+bwd", ranged(ts, "train_step_ratio"), "",
              f"({ts['step_s']:.2f} s vs {ts['bare_s']:.2f} s, {ts['tokens_per_batch']} tokens, LoRA + adapter + AdamW)")
    c = store_claims(results["formats"])
    t.add_row(f"store writer MB/s ({DEFAULT_CODEC} codec)", ranged(c, "writer_mb_s", 0), tgt("writer_mb_s"),
              f"activation shards + commits, worse dtype; creating the tables of {c['rows']} rows: {c['create_s']:.2f} s")
    t.add_row("random 256-row batches/s ÷ Arrow", ranged(c, "batches_vs_arrow"), tgt("batches_vs_arrow"),
              f"{DEFAULT_FORMAT} vs arrow (datasets), worse dtype, page-cache hot")
    t.add_row("peak RSS 10× ÷ 1× store", ranged(m, "memory_ratio_10x"), tgt("memory_ratio_10x"),
              f"{m['1x']['peak_kb'] / 1024:.0f} → {m['10x']['peak_kb'] / 1024:.0f} MiB "
              f"({m['1x']['rows']} → {m['10x']['rows']} rows; above imports ×{m['above_import_ratio']:.2f})")
    t.add_row("batch-8 ÷ batch-1 generation tok/s", ranged(g, "generation_ratio"), "",
              f"{g['tok_s_batched']:.1f} vs {g['tok_s_batch1']:.1f} tok/s, {g['prompts']} prompts")
    if mg := results.get("merged"):
        t.add_row("merged ÷ peft LoRA: frozen step time", ranged(mg, "merged_step_ratio"), "",
                  f"{mg['step_s_merged']:.2f} vs {mg['step_s_peft']:.2f} s ({mg.get('precision', 'bf16')}; what adapter-only "
                  "transfer trains)")
        t.add_row("merged ÷ peft LoRA: generation time", ranged(mg, "merged_generation_ratio"), "",
                  f"{mg['same_answers']} of {mg['prompts']} greedy answers the same ({mg.get('precision', 'bf16')})")
    f = Table(title=f"store formats ({results['formats'][0]['rows']}×{D_SYN} rows)")
    for c in ("format", "dtype", "size ÷ raw", "write MB/s", "read MB/s", "256-row batches/s"):
        f.add_column(c)
    for r in results["formats"]:
        f.add_row(r["format"], r["dtype"], f"{r['size_ratio']:.3f}", f"{r['write_mb_s']:.0f}", f"{r['read_mb_s']:.0f}",
                  f"{r['batches_per_s']:.1f}")
    return t, f


def _markdown(results: dict) -> str:
    h, s, m, g = (results[k] for k in ("harvest", "streaming", "memory", "generation"))
    c = store_claims(results["formats"])
    lines = [f"# uav bench (scale {results['scale']}, {results['device']}, donor {results['donor']})", "",
             f"Ratios measured side by side in one run: each the median (min–max) of {results.get('rounds', 1)} "
             "interleaved rounds. On a GPU box use `uav bench --scale 10` or more.", "",
             "| measurement | ratio: median (min–max) | target |", "|---|---|---|",
             f"| harvest ÷ bare forward tokens/s | {ranged(h, 'harvest_overhead')} | ≥ 0.95 |",
             f"| streaming ÷ RAM step time | {ranged(s, 'streaming_step_ratio')} | ≤ 1.05 |",
             f"| train step ÷ bare decoder forward+backward (same batch; LoRA + adapter + AdamW) | "
             f"{ranged(results['train_step'], 'train_step_ratio')} | |",
             f"| store writer MB/s ({DEFAULT_CODEC} codec; activation shards + commits, worse dtype) | "
             f"{ranged(c, 'writer_mb_s', 0)} | ≥ 300 |",
             f"| random 256-row batches/s, {DEFAULT_FORMAT} ÷ arrow (datasets), worse dtype | "
             f"{ranged(c, 'batches_vs_arrow')} | ≥ 1 |",
             f"| peak RSS, 10× ÷ 1× store | {ranged(m, 'memory_ratio_10x', 3)} | ≤ 1.10 |",
             f"| batch-8 ÷ batch-1 generation tokens/s | {ranged(g, 'generation_ratio')} | |",
             *([f"| merged ÷ peft LoRA, frozen step time ({results['merged'].get('precision', 'bf16')}; adapter-only "
                f"transfer) | {ranged(results['merged'], 'merged_step_ratio')} | |",
                f"| merged ÷ peft LoRA, generation time ({results['merged'].get('precision', 'bf16')}; "
                f"{results['merged']['same_answers']} of "
                f"{results['merged']['prompts']} greedy answers the same) | "
                f"{ranged(results['merged'], 'merged_generation_ratio')} | |"] if "merged" in results else []), "",
             "## Store formats (same rows; MB/s of raw bytes; reads are page-cache hot)", "",
             "| format | dtype | size ÷ raw | write MB/s | read MB/s | 256-row batches/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {r['dtype']} | {r['size_ratio']:.3f} | {r['write_mb_s']:.0f} | {r['read_mb_s']:.0f} | "
              f"{r['batches_per_s']:.1f} |" for r in results["formats"]]
    lines += ["", f"The store's write MB/s counts its activation shards, commits and finalize; creating its examples and "
              f"token tables ({c['rows']} rows) took "
              f"{c['create_s']:.2f} s more, once per harvest. `raw` is the default codec: "
              "activations barely compress (the size column), and random reads then need no decode; `zstd` is for "
              "stores shipped over a network."]
    return "\n".join(lines) + "\n"


def run_bench(out: Path, scale: float = 1.0, donor: str = "smollm2-135m") -> dict:
    """Run the six measurements; print tables; write out/results.json and out/results.md."""
    from rich.console import Console
    from rich.progress import Progress

    from uav_cache.examples import load_examples
    from uav_cache.models import load, resolve

    if not scale > 0:
        raise UavError(f"--scale must be > 0, got {scale}", "e.g. --scale 1 (2-core CPU) or --scale 10 (GPU)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sz = lambda n, lo=1: max(lo, int(round(n * scale)))  # noqa: E731
    device = str(pick_device("auto"))
    spec = resolve(donor)
    work = Path(tempfile.mkdtemp(dir=out, prefix="tmp-"))
    results: dict = {"scale": scale, "device": device, "donor": donor, "torch_threads": torch.get_num_threads(),
                     "rounds": ROUNDS}
    console = Console()
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("loading the donor", total=6)
            model, tok = load(spec, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
            bar.update(task, description="1/6 harvest overhead")
            results["harvest"] = harvest_overhead(model, tok, spec, sz(64, 16), work)
            store = Path(results["harvest"]["store"])
            real = Store(store).read_last(Store(store).layers[0], 0, Store(store).n_rows).float().numpy()
            bar.update(task, advance=1, description="2/6 store formats")
            results["formats"] = compare_formats(synthetic_rows(real, sz(20_000, 512)), work)
            bar.update(task, advance=1, description="3/6 streaming vs RAM")
            results["streaming"] = streaming_ratio(store, donor, sz(12, ROUNDS), work)
            results["train_step"] = train_step_ratio(store, donor, sz(6, ROUNDS), work)
            bar.update(task, advance=1, description="4/6 memory 1× vs 10×")
            examples = load_examples("demo").examples
            results["memory"] = memory_ratio(real, examples, sz(8192, 256), work)
            bar.update(task, advance=1, description="5/6 generation batch 8 vs 1")
            qs = [q["question"] for e in examples for q in e.get("qa", [])][: sz(16, 8)]
            results["generation"] = generation_ratio(model, tok, qs)
            bar.update(task, advance=1, description="6/6 merged vs peft LoRA")
            results["merged"] = merged_lora_ratio(model, tok, qs, sz(6, ROUNDS))
            bar.update(task, advance=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["harvest"].pop("store", None)
    for t in _table(results):
        console.print(t)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(_markdown(results))
    console.print(f"results → {out / 'results.json'}, {out / 'results.md'}")
    return results


__all__ = ["run_bench", "harvest_overhead", "streaming_ratio", "train_step_ratio", "memory_ratio", "generation_ratio",
           "merged_lora_ratio"]
