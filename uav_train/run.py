"""The run directory: what a training run leaves behind, and how to load or resume it.

    RUN/config.json            the RunRecord: resolved TrainConfig + what it was trained on (stores, decoder …)
    RUN/adapter.safetensors    adapter weights          RUN/uav_adapter.json     how to rebuild the adapter
    RUN/lora/                  the decoder LoRA in PEFT format (PeftModel.from_pretrained loads it)
    RUN/stage1/                the stage-1 (alignment) adapter, the warm start of stage 2
    RUN/metrics.jsonl          one JSON object per step / validation      RUN/loss.png  the curves
    RUN/checkpoint/            the latest resumable state (deleted when the run completes)

Everything is safetensors or JSON (no pickle), and every write goes to a temp path that is renamed into
place, so a kill at any moment leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from uav_cache.device import resolve_precision
from uav_cache.errors import UavError
from uav_cache.files import share_mode, write_json_atomic
from uav_train.adapters import InputAdapter, adapter_from_description

if TYPE_CHECKING:
    from uav_cache.store import Store

CONFIG = "config.json"
ADAPTER = "adapter.safetensors"
ADAPTER_CONFIG = "uav_adapter.json"  # not PEFT's adapter_config.json, which PeftModel.from_pretrained(RUN) would read
LEGACY_ADAPTER_CONFIG = "adapter_config.json"  # its name in a run folder without uav_adapter.json; still read
LORA = "lora"
CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"


def read_json(path: Path) -> Any:
    """A JSON file of a run; a damaged one (truncated, garbled, not UTF-8) is one line naming it, not a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UavError(f"{path} is damaged (not valid JSON: {e})",
                       "restore it from a copy, or train the run again into a new --out") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written temp folder into place; a kill mid-way leaves the old or the new folder."""
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _contig(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def disk_error(what: Path, e: Exception) -> UavError:
    return UavError(f"cannot write {what}: {getattr(e, 'strerror', None) or e}",
                    "free disk space or fix permissions, then re-run the same command: it resumes from the last "
                    "checkpoint")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """One safetensors file, as readable as the umask allows (safetensors itself writes 0600). A full disk is a
    UavError (safetensors reports it as SafetensorError, not OSError) and leaves no partial file."""
    try:
        save_file(_contig(tensors), str(path))
    except (OSError, SafetensorError) as e:
        Path(path).unlink(missing_ok=True)
        raise disk_error(path, e) from e
    share_mode(path)


@contextmanager
def temp_dir_for(final: Path):
    """A temp folder beside ``final`` that is removed if writing it fails (a full disk must not leave a 20 MB
    half-checkpoint behind); the caller renames it into place."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError)):
            raise disk_error(final, e) from e
        raise


def save_adapter(folder: Path, adapter: InputAdapter, extra: dict | None = None) -> None:
    """adapter.safetensors + uav_adapter.json into ``folder`` (written via a temp folder)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with temp_dir_for(folder) as tmp:
        save_tensors(adapter.state_dict(), tmp / ADAPTER)
        write_json_atomic(tmp / ADAPTER_CONFIG, {**adapter.describe(), "n_trainable": adapter.n_trainable(), **(extra or {})})
        if folder.exists():  # keep anything else already in the folder (a run dir holds more than the adapter)
            for name in (ADAPTER, ADAPTER_CONFIG):
                os.replace(tmp / name, folder / name)
            (folder / LEGACY_ADAPTER_CONFIG).unlink(missing_ok=True)
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, folder)


def adapter_description(folder: Path) -> Path | None:
    """The adapter's description file in ``folder`` (uav_adapter.json, else LEGACY_ADAPTER_CONFIG)."""
    for name in (ADAPTER_CONFIG, LEGACY_ADAPTER_CONFIG):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def check_tensors(path: Path, what: str) -> None:
    """Refuse a missing or truncated safetensors file with one line naming it (the header and its data offsets are
    checked against the file's size; the tensors are not read)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise UavError(f"{what} {path} is missing", "restore it from a copy, or train the run again into a new --out")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise UavError(f"{what} {path} is damaged ({e})",
                       "restore it from a copy, or train the run again into a new --out") from None


def load_adapter(folder: Path) -> tuple[InputAdapter, dict]:
    folder = Path(folder)
    desc_path = adapter_description(folder)
    if not (folder / ADAPTER).exists() or desc_path is None:
        raise UavError(f"no adapter in {folder}",
                       f"pass a finished run directory (it holds {ADAPTER} and {ADAPTER_CONFIG})")
    check_tensors(folder / ADAPTER, "adapter weights")
    desc = read_json(desc_path)
    adapter = adapter_from_description(desc)
    weights = load_file(str(folder / ADAPTER))
    if "config" in desc:  # the description of one adapter, without branches: it is the pooled branch
        weights = {f"pooled.{k}": v for k, v in weights.items()}
    adapter.load_state_dict(weights)
    return adapter, desc


# ---- checkpoints: model, optimizer, RNG and stream position, without pickle


def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"state.{pid}.{key}"] = val
            else:
                scalars[f"{pid}.{key}"] = val
    return _contig(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, val in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = val
    for name, val in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run: Path, *, state: dict, weights: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> None:
    """state: JSON-able progress (stage, step, items consumed, early-stopping state); weights: trainables."""
    final = Path(run) / CHECKPOINT
    with temp_dir_for(final) as tmp:
        save_tensors(weights, tmp / "weights.safetensors")
        opt_t, opt_meta = _optimizer_to_tensors(opt)
        save_tensors(opt_t, tmp / "optimizer.safetensors")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_tensors(rng, tmp / "rng.safetensors")
        write_json_atomic(tmp / "state.json", {**state, "optimizer": opt_meta})
        replace_dir(tmp, final)


def load_checkpoint(run: Path, opt: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore the optimizer and RNG; return (state, trainable weights)."""
    ck = Path(run) / CHECKPOINT
    state = read_json(ck / "state.json")
    _optimizer_from_tensors(opt, load_file(str(ck / "optimizer.safetensors")), state.pop("optimizer"))
    rng = load_file(str(ck / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state, load_file(str(ck / "weights.safetensors"))


def check_out(out: str | Path, stores: list[Store]) -> None:
    """Refuse a run folder that is one of the run's stores, or inside one: its files would land among the store's."""
    o = Path(out).resolve()
    for st in stores:
        s = Path(st.path).resolve() if "://" not in st.path else None
        if s is not None and (o == s or s in o.parents):
            raise UavError(f"--out {out} is {'the store' if o == s else 'inside the store'} {st.path}",
                           "choose a run folder outside the store, e.g. --out runs/NAME")


def resume_hint(run: Path) -> str:
    """What re-running an interrupted `uav train` does, from what the run folder holds now."""
    try:
        st = json.loads((Path(run) / CHECKPOINT / "state.json").read_text())
        return f"checkpoint at stage {st['stage']} step {st['step']}: the same command resumes from it"
    except (OSError, ValueError, KeyError):
        pass
    if adapter_description(Path(run) / "stage1") is not None:
        return "stage 1 is saved: the same command resumes at stage 2"
    return "no checkpoint written yet: the same command starts over"


def plot_losses(run: Path) -> Path | None:
    """loss.png: training loss (smoothed) and validation loss per stage."""
    rows = [json.loads(line) for line in (Path(run) / METRICS).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted({r["stage"] for r in rows})
    fig, axes = plt.subplots(1, len(stages), figsize=(8.5 * len(stages), 3.8), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        tr = [(r["step"], r["loss"]) for r in rows if r["stage"] == stage and "loss" in r]
        va = [(r["step"], r["val_loss"]) for r in rows if r["stage"] == stage and "val_loss" in r]
        if tr:
            s, v = zip(*tr)
            ax.plot(s, v, color="tab:blue", alpha=0.3, lw=1)
            w = max(1, len(v) // 20)
            sm = [sum(v[max(0, i - w + 1): i + 1]) / len(v[max(0, i - w + 1): i + 1]) for i in range(len(v))]
            ax.plot(s, sm, color="tab:blue", lw=2, label="train (smoothed)")
        if va:
            s, v = zip(*va)
            ax.plot(s, v, "o-", color="tab:orange", lw=2, label="validation")
        sh = [(r["step"], r["val_loss_shuffled"]) for r in rows if r["stage"] == stage and "val_loss_shuffled" in r]
        if sh:  # the reading gap: the same validation items with another item's activation
            s, v = zip(*sh)
            ax.plot(s, v, "s--", color="tab:red", lw=1.5, label="validation, shuffled activations")
            gaps = [(r["step"], r["reading_gap"]) for r in rows if r["stage"] == stage and "reading_gap" in r]
            g = ax.twinx()  # the gap itself on its own scale: a few hundredths of a nat would vanish on the loss axis
            g.plot(*zip(*gaps), "^-", color="tab:purple", lw=1.5, label="reading gap (right axis)")
            groups = sorted({k for r in rows if r["stage"] == stage for k in r if k.startswith("gap_")})
            for k, c in zip(groups if len(groups) > 1 else [], plt.cm.tab10.colors[5:] + plt.cm.Dark2.colors):
                pts = [(r["step"], r[k]) for r in rows if r["stage"] == stage and k in r]  # which kinds it reads
                g.plot(*zip(*pts), ".-", color=c, lw=1, alpha=0.8, label=f"gap: {k[4:]}")
            g.axhline(0, color="tab:purple", lw=0.8, ls=":")
            g.set_ylabel("reading gap = shuffled − true (nats)", color="tab:purple")
            g.legend(loc="upper left", bbox_to_anchor=(1.1, 1.0), fontsize=8)  # beside the axes: no curve hidden
        ax.set_title({1: "stage 1: alignment (adapter only)", 2: "stage 2: QA tuning"}.get(stage, f"stage {stage}"))
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        # with a gap axis both legends go beside the plot (losses below the gaps); inside they hid the curves
        ax.legend(**({"loc": "lower left", "bbox_to_anchor": (1.1, 0.0), "fontsize": 8} if sh else {}))
    fig.suptitle(Path(run).name)
    fig.tight_layout()
    out = Path(run) / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- the run record

# what a store holds: the same path re-harvested with other data or another donor is another store
STORE_CONTENT = ("donor", "weights_fingerprint", "dataset_fingerprint", "layers", "d_model", "dtype", "positions",
                 "donor_input", "max_length", "n_rows", "compute_dtype")


@dataclass
class StoreRecord:
    """What config.json records of one training store: where it is (as typed and absolute) and what it holds.

    A key the record lacks loads as None: unknown, so never compared (:meth:`changes`). Only path, donor, layers,
    d_model and weights_fingerprint are in every record."""

    path: str = ""  # as typed at training (may be relative to another folder, or an fsspec URL)
    abspath: str | None = None  # absolute path (a URL as typed); None where not recorded: use path
    donor: str | None = None
    donor_path: str | None = None  # the donor's local folder; None where only its name (donor) was recorded
    layers: list[str] = field(default_factory=list)
    d_model: int | None = None
    dtype: str | None = None
    compute_dtype: str | None = None
    dataset: str | None = None  # the dataset's name
    positions: str | None = None
    donor_input: str | None = None  # None where not recorded: raw text (see donor_reading)
    max_length: int | None = None  # None where not recorded: the donor's registry max_length (see donor_reading)
    dataset_fingerprint: str | None = None
    weights_fingerprint: str | None = None
    n_rows: int | None = None
    committed_rows: int | None = None  # rows the run could read: n_rows, fewer for an unfinished harvest

    @classmethod
    def of(cls, s: Store) -> "StoreRecord":
        m = s.meta
        return cls(path=s.path, abspath=s.path if "://" in s.path else str(Path(s.path).resolve()), donor=m["donor"],
                   donor_path=m.get("donor_path"), layers=m["layers"], d_model=m["d_model"], dtype=m["dtype"],
                   compute_dtype=m.get("compute_dtype"), dataset=m["dataset"]["name"], positions=m["positions"],
                   donor_input=m["donor_input"], max_length=m["max_length"],
                   dataset_fingerprint=m["dataset_fingerprint"], weights_fingerprint=m["weights_fingerprint"],
                   n_rows=m["n_rows"], committed_rows=len(s.committed_rows()))

    @classmethod
    def from_dict(cls, d: dict) -> "StoreRecord":
        return cls(**{k: v for k, v in d.items() if k in _field_names(cls)})

    def to_dict(self) -> dict:
        return asdict(self)

    def location(self) -> str | None:
        """Where to open the store now: the absolute path recorded at training (the typed one may be relative to
        another folder), else the path as typed; a URL as is. None when neither exists."""
        return next((p for p in (self.abspath, self.path) if p and ("://" in p or Path(p).exists())), None)

    def donor_reading(self, registry_max_length: int) -> dict:
        """How the donor read the store's texts, as harvest.read_out takes it (dtype, max_length, donor_input)."""
        return {"dtype": self.dtype, "donor_input": self.donor_input or "raw",
                "max_length": registry_max_length if self.max_length is None else self.max_length}

    def changes(self, now: "StoreRecord") -> list[str]:
        """What the store at this path holds now that differs from what was recorded (unrecorded keys skipped)."""
        return [f"{now.path} {k}: run has {str(getattr(self, k))[:16]}, store has {str(getattr(now, k))[:16]}"
                for k in STORE_CONTENT if getattr(self, k) is not None and getattr(self, k) != getattr(now, k)]


@dataclass
class RunRecord:
    """A run's config.json: the resolved training settings and what the run was trained on. Written by the
    trainer when a run starts ("training") and when it ends ("complete"); read by resume, evaluation and explain.

    ``to_dict``/``save`` write exactly these keys, in this order; ``from_dict``/``load`` accept any record: a key it
    lacks takes the default given here (None: not recorded), and keys this version does not know are dropped. The
    fallbacks for a key a record lacks are here: :attr:`readout`, :meth:`input_spec`,
    :meth:`decoder_weights`, :meth:`StoreRecord.donor_reading`."""

    status: str | None = None  # "training" while it runs, "complete" once the final weights are written
    # the resolved TrainConfig (asdict) as trained; a dict, not a TrainConfig: a recorded run's settings must load
    # even after a field is renamed or gone, and run.py sits below the trainer
    train: dict = field(default_factory=dict)
    identity: dict | None = None  # the settings a resume must match exactly (TrainConfig.identity())
    stores: list[StoreRecord] = field(default_factory=list)
    donor: str | None = None
    layers: list[str] = field(default_factory=list)  # module paths, as the store names them
    decoder: str | None = None  # as typed: a registry name, hub id or folder
    decoder_fingerprint: str | None = None  # the decoder's weights; None where not recorded (see decoder_weights)
    adapter: dict = field(default_factory=dict)  # InputAdapter.describe(): each branch's kind, config, d_in, …
    trainable_params: dict = field(default_factory=dict)  # {"adapter": n, "lora": n}
    lora: str | None = None  # "trained", "frozen from RUN_A", or None (no LoRA)
    summary: list = field(default_factory=list)  # one dict per stage (and warm start) once complete

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        known = {k: v for k, v in d.items() if k in _field_names(cls)}
        known["stores"] = [StoreRecord.from_dict(s) for s in d.get("stores") or []]
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        return cls.from_dict(read_json(path))

    @classmethod
    def of(cls, run: str | Path) -> "RunRecord | None":
        """The record in the run folder ``run``; None where the folder holds none (no run has started there)."""
        p = Path(run) / CONFIG
        return cls.load(p) if p.exists() else None

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    def trained_on(self, dataset_fingerprint: str | None) -> bool:
        """Whether a store of this dataset is one the run was trained on (its own data: results go in the run folder,
        and every source of it counts as seen)."""
        return dataset_fingerprint is not None and dataset_fingerprint in {s.dataset_fingerprint for s in self.stores}

    @property
    def readout(self) -> str:
        """The stored read-out the adapter reads; settings that name none read the last token."""
        return self.train.get("readout", "last")

    @property
    def adapter_kind(self) -> str:
        """The adapter as reports name it: a branch's kind ("mlp") or both ("mlp+pervector")."""
        a = self.adapter
        if "config" in a:  # the description of one adapter, without branches: the pooled one
            return a["config"]["kind"]
        return "+".join(a[k]["config"]["kind"] for k in ("pooled", "tokens") if a.get(k))

    @property
    def donor_width(self) -> int | None:
        """The width of the donor vectors the adapter reads."""
        a = self.adapter
        return a.get("d_in") if "config" in a else next((a[k]["d_in"] for k in ("pooled", "tokens") if a.get(k)), None)

    def input_spec(self):
        """What the run feeds its adapter (stream.InputSpec): settings without token_layers read the pooled read-out
        of their layers only. Settings with ``tokens = true`` (every token through one pooled adapter, which this uav
        does not read) are refused: retrain such a run with token_layers. Views are how training drew its items, not
        what the adapter reads: a privileged evaluation asks for them itself (uav_eval.privileged.view_spec)."""
        from uav_train.stream import InputSpec, default_form

        t = self.train
        if t.get("tokens"):
            raise UavError("this run was trained with tokens = true (every token through one adapter), which this uav "
                           "no longer reads", "retrain it with token_layers (docs/method.md: token vectors)")
        pooled = t.get("adapter", "mlp") != "none"
        token_layers = tuple(t.get("token_layers") or ())
        forms = t.get("forms") or {default_form(pooled, bool(token_layers)): 1.0}
        return InputSpec(layers=tuple(self.layers) if pooled else (), readout=self.readout if pooled else None,
                         token_layers=token_layers, forms=tuple(sorted(forms.items())),
                         window=tuple(t.get("window") or (1, 32)))

    def decoder_weights(self) -> str:
        """The weights fingerprint of the decoder: weights, not names, identify it ("smollm2-135m", its hub id,
        "dir/" and "dir" agree); computed from the decoder where the record has none."""
        from uav_cache.models import resolve, weights_fingerprint

        return self.decoder_fingerprint or weights_fingerprint(resolve(self.train["decoder"]))

    def check_same_stores(self, run: Path, stores: list[Store]) -> None:
        """Refuse to resume (or call finished) a run whose stores now hold other rows than it recorded."""
        recs = self.stores
        changed = [f"{len(recs)} store(s) recorded, {len(stores)} given"] if len(recs) != len(stores) else []
        for rec, st in zip(recs, stores):
            changed += rec.changes(StoreRecord.of(st))
        if changed:
            raise UavError(f"{run} holds a run trained on other data than the store(s) now hold ({'; '.join(changed)})",
                           "choose a new --out, or delete the run folder to retrain")


def _field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


@dataclass
class RunInfo:
    path: Path
    record: RunRecord

    @classmethod
    def open(cls, run: str | Path, flag: str | None = None, lora: bool = False) -> "RunInfo":
        """A finished run's folder and record, its files checked (:meth:`check_files`); refused with one line when it
        is not a run or has not finished. ``flag``: the setting of another run that builds on this one
        (--frozen-decoder, init_from), named in the refusal; ``lora``: this run must bring a LoRA."""
        p = Path(run)
        rec = RunRecord.of(p)
        fix = f"point {flag} at a completed stage-2 run" + (" trained with LoRA" if lora else "") if flag else None
        if rec is None:
            raise UavError(f"{f'{flag} {run}' if flag else p} is not a uav run directory (no {CONFIG})",
                           fix or "pass the --out folder of `uav train`")
        who = f"{flag} {run}" if flag else f"run {p}"
        if rec.status != "complete":
            raise UavError(f"{who} has not finished training (status {rec.status!r})",
                           fix or "re-run the same `uav train` command to resume it")
        if lora and not (p / LORA).exists():
            raise UavError(f"{who} has no LoRA ({p / LORA} is missing)", fix)
        info = cls(p, rec)
        info.check_files()
        return info

    def check_files(self) -> None:
        """Every file the finished run answers with is there and whole, checked before any model is loaded: the
        adapter (weights and description) and, when the record says the run has a LoRA, the PEFT folder. Without
        this a deleted lora/ would be evaluated as the bare decoder, under the run's name."""
        p = self.path
        if adapter_description(p) is None:
            raise UavError(f"run {p} has no {ADAPTER_CONFIG}", "restore it from a copy, or train the run again")
        read_json(adapter_description(p))
        check_tensors(p / ADAPTER, "adapter weights")
        if self.record.lora is not None or (p / LORA).exists():  # "trained" or "frozen from RUN_A": saved with the run
            if not (p / LORA).is_dir():
                raise UavError(f"run {p} was trained with a LoRA ({self.record.lora}) but {p / LORA} is missing",
                               "restore the lora/ folder from a copy, or train the run again")
            if not (p / LORA / "adapter_config.json").is_file():
                raise UavError(f"LoRA config {p / LORA / 'adapter_config.json'} is missing",
                               "restore the lora/ folder from a copy, or train the run again")
            read_json(p / LORA / "adapter_config.json")
            check_tensors(p / LORA / "adapter_model.safetensors", "LoRA weights")


@dataclass
class LoadedRun:
    """A finished run, ready to answer: decoder (+ LoRA via peft), tokenizer, adapter, prompt template."""

    info: RunInfo
    model: Any
    tok: Any
    adapter: InputAdapter
    template: Any
    has_lora: bool
    merged: bool = False  # the LoRA is folded into the decoder's weights: faster, and it can no longer be bypassed


def load_run(run: str | Path, device: str = "cpu", merge: bool | None = False) -> LoadedRun:
    """Load the decoder named in the run (in the precision it trained in), its LoRA (if any) and its adapter.

    ``merge`` folds the LoRA into the decoder's weights (peft's merge_and_unload): generation then skips peft's
    small per-layer matmuls (0.82× the time on a 2-core CPU, `make bench`), at the price of a LoRA that can no
    longer be switched off for the base-model controls, and of W + BA rounded once to the weights' dtype.
    ``None``: as the run's ``merge_lora`` setting (true unless it trained with it off)."""
    from uav_cache.models import load, resolve
    from uav_train.prompt import PromptTemplate

    info = RunInfo.open(run)
    merge = info.record.train.get("merge_lora", True) if merge is None else merge
    # the decoder in the precision the run trains in on this device (bf16 runs: bf16 weights, as their frozen decoder
    # was; on a device without bf16 units, the same weights in fp32: ~100× faster there)
    bf16 = resolve_precision(info.record.train.get("precision", "auto"), torch.device(device)) == "bf16"
    model, tok = load(resolve(info.record.decoder), device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    has_lora = (info.path / LORA).exists()
    if has_lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(info.path / LORA), is_trainable=False)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    adapter, _ = load_adapter(info.path)
    return LoadedRun(info, model, tok, adapter.to(device).eval(), PromptTemplate(tok), has_lora, has_lora and merge)
