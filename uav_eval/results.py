"""results.json: what one evaluation of a run found, as a dataclass that round-trips the JSON (peft style).

protocol.evaluate builds a :class:`Results`; report.py, the CLI and the demo read its fields. :func:`location` and
:func:`suffix` are the one rule for where an evaluation lands, keyed by everything that changes its numbers, so a
second evaluation never overwrites another: the folder by dataset and split (the run folder for the run's own test
split, ``RUN/evals/<dataset>-<fingerprint>[-<split>]/`` for any other dataset or split), the file names by the limit
(``-limitN``) and by a digest of every other setting that differs from the standard evaluation's (``-<settings>``,
:attr:`Results.settings` lists them; protocol.STANDARD). ``save`` writes
strict JSON (NaN → null) with exactly these keys in this order; ``load``/``from_dict`` accept results written
by older versions: a missing key (or a null list/table) takes the default given here, and keys this version
does not know are dropped. No torch import here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from uav_cache.errors import UavError
from uav_cache.files import write_text_atomic


@dataclass
class Results:
    run: str = ""  # the run directory evaluated
    store: str | None = None  # the store its items came from
    dataset: str | None = None  # that store's dataset name (None in older results)
    dataset_fingerprint: str | None = None  # that store's dataset (None in older results)
    own_dataset: bool = True  # the run's own training dataset (its test split is the run's headline evaluation)
    split: str = "test"
    donor: str | None = None
    decoder: str | None = None
    adapter: str | None = None  # the adapter kind (mlp, qformer …)
    lora: str | None = None  # "trained", "frozen from RUN_A", or None (no LoRA)
    trainable_params: dict = field(default_factory=dict)  # {"adapter": n, "lora": n}
    layers: list[str] = field(default_factory=list)  # the run's layers ([] in older results: unknown)
    readout: str = "last"  # the stored read-out the run reads; results from before read-outs: the last token
    n_items: int | None = None  # items per method
    methods: list[str] = field(default_factory=list)  # in the order they ran (uav first)
    config: dict = field(default_factory=dict)  # the EvalConfig, as a dict
    # what config["limit"] counted: every question of N texts per source; older results counted N questions
    limit_counts: str = "questions"
    # the settings that change numbers and differ from the standard evaluation's (controls, answer lengths, seed,
    # the store's reading …: protocol.settings); {} for the standard one. Their digest is in the file names (:attr:`tag`)
    settings: dict = field(default_factory=dict)
    aggregates: dict = field(default_factory=dict)  # {"by_task"|"by_source": {"METHOD/GROUP": {metric: stat}}}
    reading: dict = field(default_factory=dict)  # uav − shuffled per group (protocol.reading); {} without shuffled
    probe: dict = field(default_factory=dict)  # the linear-probe ceiling per classification source; {} without
    calibration: dict = field(default_factory=dict)  # per task group: correctness by score bin (protocol.calibration)
    # texts with a shown_from: the run on the later positions in context, alone and shuffled (uav_eval.privileged)
    privileged: dict = field(default_factory=dict)
    items: list[dict] = field(default_factory=list)  # one row per (method, item) with every metric
    seconds: float | None = None

    def folder(self) -> Path:
        """Where this evaluation's files go (:func:`location`)."""
        return location(self.run, dataset=self.dataset, fingerprint=self.dataset_fingerprint, split=self.split,
                        own=self.own_dataset)

    @property
    def tag(self) -> str:
        """The digest of :attr:`settings` that names this evaluation's files ("" for the standard settings)."""
        return tag(self.settings)

    def file(self, kind: str = "results", ext: str = "json") -> Path:
        """One of this evaluation's files: results.json, report.md, eval_tasks.png, privileged.png, with its limit and settings."""
        return self.folder() / f"{kind}{suffix(self.limit, self.tag)}.{ext}"

    @property
    def limit(self) -> int | None:
        """At most this many texts per source (questions in older results, :attr:`limit_counts`; None: every test
        item); it names the files (:func:`suffix`)."""
        return self.config.get("limit")

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        # a null list or table (older results wrote "reading": null) reads as empty
        return cls(**{f.name: d[f.name] for f in fields(cls)
                      if f.name in d and not (d[f.name] is None and f.default_factory is not MISSING)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, run: str | Path, limit: int | None = None) -> "Results":
        """A run directory's results.json (results-limitN.json with ``limit``), or that file itself."""
        p = Path(run)
        p = p if p.is_file() else p / f"results{suffix(limit)}.json"
        if not p.is_file():
            raise UavError(f"no {p.name} at {p.parent}", "evaluate the run first (uav eval RUN"
                           + (f" --limit {limit})" if limit is not None else ")"))
        return cls.from_dict(json.loads(p.read_text()))

    def save(self, path: str | Path) -> None:
        """Strict JSON any tool can read (NaN similarity becomes null), written atomically."""
        write_text_atomic(path, json.dumps(json_safe(self.to_dict()), indent=1, ensure_ascii=False))


EVALS = "evals"  # RUN/evals/<dataset>-<fingerprint12>[-<split>]/: evaluations on anything but the run's own test split


def dataset_folder(run: str | Path, dataset: str | None, fingerprint: str | None) -> Path:
    """``RUN/evals/<dataset>-<fingerprint[:12]>``: a dataset's test-split evaluations, and the store a ``--data`` file
    is harvested into (one per dataset, whatever split is evaluated)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset or "dataset").strip("._") or "dataset"
    return Path(run) / EVALS / f"{name}-{(fingerprint or 'unknown')[:12]}"


def location(run: str | Path, *, dataset: str | None, fingerprint: str | None, split: str, own: bool) -> Path:
    """The folder an evaluation's results.json/report.md go to: the run folder itself for the run's own dataset's
    test split, else :func:`dataset_folder` with ``-<split>`` added for any split but test (all included)."""
    if own and split == "test":
        return Path(run)
    folder = dataset_folder(run, dataset, fingerprint)
    return folder if split == "test" else folder.with_name(f"{folder.name}-{split}")


def legacy_location(run: str | Path, *, dataset: str | None, fingerprint: str | None, split: str, own: bool) -> Path:
    """Where results written before the split "all" and the settings were part of the key landed (another dataset's
    every-split evaluation shared the folder of its test split), so they can be found and moved to :func:`location`."""
    if split == "all" and not own:
        return dataset_folder(run, dataset, fingerprint)
    return location(run, dataset=dataset, fingerprint=fingerprint, split=split, own=own)


def evaluations(run: str | Path) -> list[Path]:
    """Every results*.json a run holds: its own test split first, then each other dataset/split, sorted."""
    run = Path(run)
    own = sorted(run.glob("results*.json"))
    return own + sorted((run / EVALS).glob("*/results*.json"))


def suffix(limit: int | None, settings: str = "") -> str:
    """"" for a full evaluation with the standard settings; "-limitN" for one limited to N texts per source (a quick
    `--limit 1` check is written beside the full results.json/report.md, as results-limit1.json, never over them); and
    "-<settings>" (:func:`tag`) for one with other settings."""
    return ("" if limit is None else f"-limit{limit}") + (f"-{settings}" if settings else "")


def tag(settings: dict) -> str:
    """Eight hex digits of the settings' canonical JSON ("" for none): the same settings always get the same name."""
    if not settings:
        return ""
    return hashlib.sha256(json.dumps(json_safe(settings), sort_keys=True).encode()).hexdigest()[:8]


NAME = re.compile(r"results(?:-limit(\d+))?(?:-([0-9a-f]{8}))?\.json")


def parse_name(name: str) -> tuple[int | None, str] | None:
    """(limit, settings tag) of a results file name; None for any other file."""
    m = NAME.fullmatch(name)
    return None if m is None else (int(m[1]) if m[1] else None, m[2] or "")


def json_safe(x: Any) -> Any:
    """NaN/inf -> null and numpy scalars -> Python, so results.json is strict JSON any tool can read."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x
