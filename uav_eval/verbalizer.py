"""The Verbalizer: a finished run loaded once, asked anything about activations.

    v = Verbalizer.load("runs/self")
    v.ask({23: hidden_states[24][0]}, ["What is the topic of this text?"])    # activations you already hold
    v.read("Montgomery is the capital of Alabama.", ["Which US state is mentioned?"])   # the donor reads the text
    v.per_token("Arsenal won 2-0 at home.", "What is the topic of this text?")  # one answer per token (token runs)

``ask`` takes a block's residual output for one text, (tokens, d), from any hook (transformers'
``output_hidden_states`` — index i + 1 is block i's output —, nnsight, TransformerLens, or the store), keyed by the
block's module path or index; it makes exactly what a harvest stores from it (the read-out, the token vectors, in
the store's dtype) and checks width, layers and read-out against the run. ``read`` runs the donor itself: loaded,
read, freed, so donor and decoder are never in memory together. Every answer comes with its controls: the same
question with another text's activation from the run's own store (``shuffled``) and with none (``no_soft``), and a
score: the answer's mean log-probability per token with the true activation minus with the shuffled ones. A score
near 0 says the answer does not depend on the activation.
"""

from __future__ import annotations

import gc
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uav_cache.device import pick_device
from uav_cache.errors import UavError
from uav_cache.models import ModelSpec, load, resolve, weights_fingerprint
from uav_cache.store import STORAGE_DTYPES, Store, pool
from uav_eval.generate import generate
from uav_train.run import LoadedRun, RunInfo, RunRecord, load_run
from uav_train.stream import Acts, InputSpec, RowActs, read_rows, stack_acts
from uav_train.trainer import answer_losses


@dataclass
class Answer:
    question: str
    answer: str  # with the activation
    shuffled: str | None = None  # with another text's activation from the run's store (None: no store at hand)
    no_soft: str | None = None  # with no activation at all
    score: float | None = None  # mean log p(answer) per token: true activation − shuffled ones (nats)
    position: int | None = None  # the token position read, for one-token questions
    token: str | None = None  # that token's characters in the text (per_token of a read text), for labels


def donor_spec(rec: RunRecord, donor: str | None = None) -> ModelSpec:
    """The run's donor: ``donor`` if given, else the local folder the store recorded, else the donor's name (a
    registry name; for a local folder only its basename was recorded by older stores)."""
    if donor:
        return resolve(donor)
    path = rec.stores[0].donor_path
    for name in ([path] if path and Path(path).is_dir() else []) + [rec.donor]:
        try:
            return resolve(name)
        except UavError:
            continue
    raise UavError(f"cannot find the run's donor {rec.donor!r} (not a registry name, nor a folder here)",
                   "pass --donor PATH: the model folder the store was harvested from")


class Verbalizer:
    """A finished run (decoder, LoRA, adapter) in memory, with what it reads (:class:`InputSpec`)."""

    def __init__(self, lr: LoadedRun, references: int = 8, seed: int = 0):
        self.lr = lr
        self.rec = lr.info.record
        self.spec: InputSpec = self.rec.input_spec()
        self.device = next(lr.model.parameters()).device
        self.dtype = self.rec.stores[0].dtype or "fp16"
        self.width = self.rec.donor_width
        self._refs: list[Acts] | None = None
        self.last_cut: tuple[int, int] | None = None  # (tokens, cap) of the last text read_acts cut, else None
        self._n_refs, self._seed = references, seed

    @classmethod
    def load(cls, run: str | Path, device: str = "auto", references: int = 8) -> "Verbalizer":
        """Load a finished run once; ``references`` texts of its store serve as the shuffled control."""
        return cls(load_run(run, device=str(pick_device(device)), merge=None), references)  # as the run says: nothing here bypasses it

    # ---- activations in
    @property
    def layers(self) -> list[str]:
        """The blocks (module paths) the run reads: its pooled layers, then its token layers."""
        return list(dict.fromkeys((*self.spec.layers, *self.spec.token_layers)))

    def _layer(self, key) -> str:
        if isinstance(key, str) and key in self.layers:
            return key
        if str(key).lstrip("-").isdigit():
            hit = [n for n in self.layers if re.search(rf"\.{int(key)}$", n)]
            if hit:
                return hit[0]
        raise UavError(f"layer {key!r} is not one this run reads ({', '.join(self.layers)})",
                       "pass the residual output of those blocks (module path or block index as the key)")

    def acts(self, hidden, positions=None) -> Acts:
        """What the run's adapter reads from one text's hidden states: ``hidden`` is {block: (tokens, d)} (a single
        (tokens, d) tensor when the run reads one block). ``positions``: None for the whole text (the run's eval form:
        its read-out and/or every token), an int for one token, a range/list of consecutive positions for a window."""
        if isinstance(hidden, torch.Tensor):
            if len(self.layers) != 1:
                raise UavError(f"this run reads {len(self.layers)} blocks ({', '.join(self.layers)}); one tensor is "
                               "ambiguous", "pass {block: hidden states} for each")
            hidden = {self.layers[0]: hidden}
        got = {self._layer(k): torch.as_tensor(v) for k, v in dict(hidden).items()}
        missing = [n for n in self.layers if n not in got]
        if missing:
            raise UavError(f"no hidden states for {', '.join(missing)}", f"pass every block the run reads: {self.layers}")
        for n, h in got.items():
            if h.dim() == 3 and h.shape[0] == 1:
                got[n] = h = h[0]
            if h.dim() != 2 or h.shape[0] < 1:
                raise UavError(f"hidden states of {n} have shape {tuple(h.shape)}, want (tokens, d) for one text",
                               "pass one text's block output, e.g. out.hidden_states[i + 1][0]")
            if self.width is not None and h.shape[1] != self.width:
                raise UavError(f"hidden states of {n} are {h.shape[1]} wide, the run's donor is {self.width}",
                               "pass activations of the donor the run was trained on")
            if h.is_complex() or not h.is_floating_point():
                raise UavError(f"hidden states of {n} are {str(h.dtype).removeprefix('torch.')}, not real floating-point "
                               "numbers", "pass the block's output as it comes (float32, float16 or bfloat16)")
            bad = ~torch.isfinite(h).all(1)
            if bad.any():
                raise UavError(f"hidden states of {n} are not finite (NaN or inf) at position {int(bad.nonzero()[0])}"
                               + (f" and {int(bad.sum()) - 1} more" if bad.sum() > 1 else ""), NONFINITE_FIX)
        lengths = {h.shape[0] for h in got.values()}
        if len(lengths) != 1:
            raise UavError(f"blocks have different token counts {sorted(lengths)}", "pass one text's states per block")
        n_tok = lengths.pop()
        dt = STORAGE_DTYPES[self.dtype]
        pooled = None
        if self.spec.pooled and positions is None:
            every = torch.ones(1, n_tok, dtype=torch.bool)  # the read-out of the whole text, as the harvest takes it
            pooled = torch.stack([pool(got[n].float()[None], every, r)[0].to(dt)
                                  for n in self.spec.layers for r in self.spec.readouts])
        tokens = pos = None
        if self.spec.tokens:
            pos = np.arange(n_tok) if positions is None else _positions(positions, n_tok)
            tokens = torch.stack([got[n].float()[pos].to(dt) for n in self.spec.token_layers], 1)
        elif positions is not None:
            raise UavError("this run reads pooled read-outs only: it cannot be asked about one token or a window",
                           "ask about the whole text (positions=None), or use a run trained with token_layers")
        acts = Acts(pooled, tokens, pos)
        self.check_finite(acts, f"in the run's storage dtype {self.dtype}")
        return acts

    def check_finite(self, acts: Acts, where: str = "") -> None:
        """Refuse activations with a NaN or inf, naming the layer and the position: the decoder given one answers
        nothing (an empty answer that looks like one). ``where`` says at which step (e.g. after the cast to the
        run's dtype, where a value beyond fp16's ±65504 becomes inf)."""
        if acts.finite():
            return
        if acts.pooled is not None and not torch.isfinite(acts.pooled).all():
            i = int((~torch.isfinite(acts.pooled)).any(-1).nonzero()[0])
            n_r = len(self.spec.readouts)
            what = f"the {self.spec.readouts[i % n_r]} read-out of {self.spec.layers[i // n_r]}"
            big = acts.pooled[i].float().abs().max()
        else:
            s, j = (int(x) for x in (~torch.isfinite(acts.tokens)).any(-1).nonzero()[0])
            pos = int(acts.positions[s]) if acts.positions is not None else s
            what = f"the token vector of {self.spec.token_layers[j]} at position {pos}"
            big = acts.tokens[s, j].float().abs().max()
        overflow = self.dtype == "fp16" and where and torch.isinf(big)
        raise UavError(f"{what} is not finite (NaN or inf)" + (f" {where}" if where else "")
                       + (": its values overflow fp16 (beyond ±65504)" if overflow else ""), NONFINITE_FIX)

    # ---- questions out
    def ask(self, hidden, questions: list[str] | str, *, positions=None, controls: bool = True,
            max_new_tokens: int = 32) -> list[Answer]:
        """Answers to ``questions`` about one text's hidden states (see :meth:`acts`), with controls and scores."""
        return self.ask_acts(self.acts(hidden, positions), questions, controls=controls, max_new_tokens=max_new_tokens)

    def ask_acts(self, acts: Acts, questions: list[str] | str, *, controls: bool = True,
                 max_new_tokens: int = 32) -> list[Answer]:
        questions = _questions(questions)
        self.check_finite(acts)
        answers = self._generate([acts] * len(questions), questions, max_new_tokens)
        out = [Answer(q, a, position=int(acts.positions[0]) if acts.positions is not None and len(acts.positions) == 1
                      and acts.pooled is None else None) for q, a in zip(questions, answers)]
        if controls:
            for a, ns in zip(out, self._generate([None] * len(questions), questions, max_new_tokens)):
                a.no_soft = ns
            refs = self.references(like=acts)
            if refs:
                for a, sh in zip(out, self._generate([refs[0]] * len(questions), questions, max_new_tokens)):
                    a.shuffled = sh
                for a in out:
                    a.score = self.score(acts, a.question, a.answer, refs)
        return out

    def read(self, text: str, questions: list[str] | str, *, positions=None, donor: str | None = None,
             controls: bool = True, max_new_tokens: int = 32, cut: bool = False, context: str | None = None) -> list[Answer]:
        """Run the donor on ``text`` (loaded, read, freed), then answer as :meth:`ask` does (``cut`` and ``context``:
        see :meth:`read_acts`)."""
        questions = _questions(questions)  # refused before the donor is loaded
        return self.ask_acts(self.read_acts(text, positions, donor, cut=cut, context=context), questions,
                             controls=controls, max_new_tokens=max_new_tokens)

    def read_acts(self, text: str, positions=None, donor: str | None = None, *, cut: bool = False,
                  context: str | None = None) -> Acts:
        """The donor's activations on ``text`` made into what the run reads, exactly as a harvest would store them.
        A text longer than the store's token cap is refused: an answer about its first N tokens would look like one
        about the whole. ``cut=True`` reads those first N tokens, as the harvest cut its texts, and says so (a
        warning; ``last_cut`` holds (tokens, cap), None when nothing was cut). ``context``: the donor reads it
        first, then ``text``, and the run is shown ``text``'s positions only, with the read-out pooled over them (a
        view, as a privileged evaluation shows it): what the run names there the donor carried forward."""
        from uav_cache.harvest import NonFinite, read_out, tokenize

        _text(text)
        shown_from = None
        if context is not None:
            _text(context)
            if positions is not None:
                raise UavError("a context shows the run the text's own positions; positions pick others",
                               "pass context or positions, not both")
            joined = context if context[-1].isspace() else context + " "
            text, shown_from = joined + text, len(joined)
        src = self.rec.stores[0]
        spec = donor_spec(self.rec, donor)
        if weights_fingerprint(spec) != src.weights_fingerprint:
            raise UavError(f"donor {spec.path or spec.name} here has other weights than the one the run was trained on",
                           "install the same donor weights, or pass --donor PATH to them (see the store's "
                           "weights_fingerprint)")
        how = src.donor_reading(spec.max_length)
        model, tok = load(spec, device=str(self.device))
        try:
            ids = tokenize(tok, [text], 1 << 30, how["donor_input"])[0][0]
            n, cap = len(ids), how["max_length"]
            self.last_cut = (n, cap) if n > cap else None
            if n > cap and not cut:
                raise UavError(f"the text is {n} tokens long; the run's donor reads at most {cap} (the cap its store "
                               "was harvested with)", f"shorten the text to {cap} tokens or fewer, or have it cut to "
                               "them (cut=True; uav explain --cut)")
            if n > cap:
                warnings.warn(f"the text is {n} tokens long: the donor read its first {cap} (the cap its store was "
                              "harvested with)", stacklevel=3)
            try:
                reading = read_out(model, tok, [text], self.layers, **how,
                                   keep_tokens=self.spec.tokens or shown_from is not None)[0]
            except NonFinite as e:  # the harvest's own check, said for one text and this run
                what = (f"exceeds ±65504, beyond the {self.dtype} the run's store holds" if e.overflow
                        else "is not finite (NaN or inf)")
                raise UavError(f"the donor's output at {e.layer}, position {e.position} "
                               f"({tok.decode([ids[e.position]])!r}), {what}",
                               "this text cannot be read as the run was trained (a donor whose activations exceed "
                               "fp16's range needs a run on a bf16 store); try another text") from None
            pieces = [tok.decode([i]) for i in reading.ids]
        finally:
            del model, tok  # donor and decoder are never in memory together for longer than this
            gc.collect()
        self.last_reading = reading  # token ids and their characters: what a per-token view labels positions with
        # each token's label: its characters in the text, or the decoded token where it has none (BOS, template)
        self.last_labels = [text[a:b] if a >= 0 else p for (a, b), p in zip(reading.spans, pieces)]
        hidden = {}
        for n in self.layers:  # the read-out is taken from the stored dtype's values, as the harvest took it
            hidden[n] = reading.tokens[n] if reading.tokens is not None else None
        if shown_from is not None:
            return self._view(reading, shown_from)
        if self.spec.tokens:
            acts = self.acts(hidden, positions)
            if acts.pooled is not None:  # the harvest's own read-out (computed before rounding), not a re-derivation
                acts.pooled = torch.stack([reading.pooled[r][n] for n in self.spec.layers for r in self.spec.readouts])
        elif positions is not None:
            raise UavError("this run reads pooled read-outs only: it cannot be asked about one token or a window",
                           "ask about the whole text, or use a run trained with token_layers")
        else:
            acts = Acts(torch.stack([reading.pooled[r][n] for n in self.spec.layers for r in self.spec.readouts]))
        return acts

    def _view(self, reading, shown_from: int) -> Acts:
        """The view from character ``shown_from`` on of a read text, by the stream's own rule (RowActs.view)."""
        every = np.arange(len(reading.ids))
        stack = lambda layers: torch.stack([reading.tokens[n] for n in layers], 1) if layers else None  # noqa: E731
        row = RowActs(None, stack(self.spec.token_layers), every, np.asarray(reading.spans),
                      stack(self.spec.layers) if self.spec.pooled else None, self.spec.readouts)
        acts = row.view(shown_from)
        if acts is None:
            raise UavError("the text after the context holds no token the run can be shown", "give a non-empty text")
        self.check_finite(acts, f"in the run's storage dtype {self.dtype}")
        return acts

    # ---- one answer per token
    def per_token(self, text: str, question: str, *, positions=None, donor: str | None = None, controls: bool = True,
                  max_new_tokens: int = 12, batch_size: int = 16, cut: bool = False) -> list[Answer]:
        """Read ``text`` with the donor (loaded, read, freed), then :meth:`per_token_acts`: where in the text does the
        answer show? Each Answer carries its token's characters (``token``)."""
        self._need_tokens()
        _questions(question)
        acts = self.read_acts(text, donor=donor, cut=cut)
        return self.per_token_acts(acts, question, positions=positions, labels=self.last_labels, controls=controls,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size)

    def per_token_acts(self, acts: Acts, question: str, *, positions=None, labels: list[str] | None = None,
                       controls: bool = True, max_new_tokens: int = 12, batch_size: int = 16) -> list[Answer]:
        """One Answer per token position of ``acts`` (all, or the token positions in ``positions``): ``question``
        asked about that one token's vectors alone, generated in batches of ``batch_size`` positions, each scored
        against the shuffled references (one token of each reference text). The no-activation and shuffled answers
        do not depend on the position: they are generated once and shared."""
        self._need_tokens()
        _questions(question)
        if acts.tokens is None or acts.positions is None:
            raise UavError("these activations hold no token vectors", "pass the whole text's acts (positions=None)")
        if batch_size < 1:
            raise UavError(f"batch_size must be ≥ 1, got {batch_size}", "e.g. 16")
        self.check_finite(acts)
        have = [int(p) for p in acts.positions]
        want = have if positions is None else _positions(positions).tolist()
        missing = [p for p in want if p not in have]
        if missing or not want:
            raise UavError(f"positions {missing or want} are not among this text's tokens (0 … {max(have)})",
                           f"use positions between {min(have)} and {max(have)}")
        one = [Acts(None, acts.tokens[have.index(p):have.index(p) + 1], np.array([p])) for p in want]
        out = []
        for i in range(0, len(one), batch_size):
            chunk = one[i:i + batch_size]
            for a, ans in zip(chunk, self._generate(chunk, [question] * len(chunk), max_new_tokens)):
                p = int(a.positions[0])
                out.append(Answer(question, ans, position=p,
                                  token=labels[p] if labels is not None and p < len(labels) else None))
        if not controls:
            return out
        no_soft = self._generate([None], [question], max_new_tokens)[0]
        refs = self.references(like=one[0])
        shuffled = self._generate([refs[0]], [question], max_new_tokens)[0] if refs else None
        mine = []  # log p of each position's answer given its own token
        for i in range(0, len(out), batch_size):
            mine += self.logprob(one[i:i + batch_size], [question] * len(out[i:i + batch_size]),
                                 [a.answer for a in out[i:i + batch_size]])
        # mean log p of each distinct answer over the references (not once per position), in full batches
        distinct = list(dict.fromkeys(a.answer for a in out)) if refs else []
        pairs = [(r, ans) for ans in distinct for r in refs]
        lps = []
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            lps += self.logprob([r for r, _ in chunk], [question] * len(chunk), [ans for _, ans in chunk])
        base = {ans: float(np.mean(lps[j * len(refs):(j + 1) * len(refs)])) for j, ans in enumerate(distinct)}
        for a, lp in zip(out, mine):
            a.no_soft, a.shuffled = no_soft, shuffled
            a.score = lp - base[a.answer] if refs else None
        return out

    def _need_tokens(self) -> None:
        if not self.spec.tokens:
            raise UavError("this run reads pooled vectors only: it has no answer per token",
                           "ask about the whole text, or use a run trained with token_layers")

    # ---- controls and scores
    def store(self) -> Store | None:
        """The run's own store where it recorded it (absolute path, or as typed), or None when it is not at hand."""
        path = self.rec.stores[0].location()
        try:
            return Store(path) if path else None
        except (UavError, OSError, ValueError):
            return None

    def references(self, like: Acts | None = None) -> list[Acts]:
        """Other texts' activations from the run's own store (val split, fixed by the seed), shown as ``like`` is
        shown (a whole text, one token, a window): the shuffled control. [] when the store is not at hand."""
        if self._refs is None:
            self._refs, self._ref_rows = [], []
            store = self.store()
            try:
                if store is None:
                    return []
                rows = store.split_rows("val")
                rows = rows if len(rows) else store.split_rows("train")
                pick = np.sort(np.random.default_rng(self._seed).choice(rows, min(self._n_refs, len(rows)), replace=False))
                self._ref_rows: list[RowActs] = read_rows(store, pick, self.spec)
                self._refs = [ra.form(self.spec.eval_form()) for ra in self._ref_rows]
            except (UavError, OSError, ValueError):
                self._refs, self._ref_rows = [], []
        if like is None or like.pooled is not None or like.tokens is None:
            return self._refs
        rng = np.random.default_rng(self._seed + 1)  # a window as long as ``like``'s, from each reference text
        w = len(like.tokens)
        out = []
        for ra in self._ref_rows:
            a = int(rng.integers(0, max(1, len(ra.positions) - w + 1)))
            out.append(Acts(None, ra.tokens[a:a + w], ra.positions[a:a + w]))
        return out

    def logprob(self, acts: list[Acts], questions: list[str], answers: list[str]) -> list[float]:
        """Mean log-probability per answer token of each answer, teacher-forced, given each acts."""
        return logprobs(self.lr, acts, questions, answers)

    def score(self, acts: Acts, question: str, answer: str, refs: list[Acts] | None = None) -> float | None:
        """log p(answer | acts) − mean over references of log p(answer | reference), per answer token (nats)."""
        refs = self.references(like=acts) if refs is None else refs
        if not refs:
            return None
        lp = self.logprob([acts, *refs], [question] * (len(refs) + 1), [answer] * (len(refs) + 1))
        return lp[0] - float(np.mean(lp[1:]))

    def _generate(self, acts: list[Acts | None], questions: list[str], max_new_tokens: int) -> list[str]:
        lr, t = self.lr, self.lr.template
        if max_new_tokens < 1:
            raise UavError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}", "e.g. 32")
        if all(a is None for a in acts):
            prompts = [t.prompt(q, 0) for q in questions]
            return generate(lr.model, lr.tok, prompts, None, stop_ids=t.stop_ids(), max_new_tokens=max_new_tokens)
        with torch.no_grad():
            soft, mask = lr.adapter(stack_acts(acts).to(self.device))
        if not torch.isfinite(soft[mask]).all():
            raise UavError(f"the adapter's output is not finite (it overflows {str(soft.dtype).removeprefix('torch.')}) "
                           f"for these activations, which reach {_largest(acts[0] if acts else None)}", NONFINITE_FIX)
        prompts = [t.prompt(q, int(n)) for q, n in zip(questions, mask.sum(1).tolist())]
        return generate(lr.model, lr.tok, prompts, soft, stop_ids=t.stop_ids(), max_new_tokens=max_new_tokens,
                        soft_mask=mask)


@torch.no_grad()
def logprobs(lr: LoadedRun, acts: list[Acts], questions: list[str], answers: list[str] | list[list[int]]) -> list[float]:
    """Mean log-probability per answer token of each answer (its end of turn included; or token ids as generated),
    teacher-forced, given each item's activation: what the Verbalizer's and the evaluation's scores compare."""
    sums, counts = answer_losses(lr.model, lr.template, lr.adapter, stack_acts(acts), questions, answers,
                                 device=next(lr.model.parameters()).device)
    return [float(-s / max(int(c), 1)) for s, c in zip(sums.double().cpu(), counts.cpu())]


NONFINITE_FIX = ("pass finite activations: a NaN or inf has no answer (a donor whose activations exceed fp16's ±65504 "
                 "needs bf16 or fp32)")


def _largest(acts: Acts | None) -> str:
    """The largest magnitude in ``acts``, for a message."""
    parts = [t.float().abs().max() for t in (acts.pooled, acts.tokens) if t is not None] if acts else []
    return f"|x| = {float(max(parts)):.3g}" if parts else "values the adapter cannot take"


def _text(text) -> None:
    """Refuse a text that is not a non-empty string, saying what was given."""
    if not isinstance(text, str):
        raise UavError(f"the text is a {type(text).__name__}, not a string", "pass the text itself, as a str")
    if not text.strip():
        raise UavError("the text is empty", "give the donor some text to read")


def _questions(questions) -> list[str]:
    """A question or a list of them, each a non-empty string; refused with what was given otherwise."""
    qs = [questions] if isinstance(questions, str) else list(questions) if isinstance(questions, (list, tuple)) else None
    if qs is None:
        raise UavError(f"the questions are a {type(questions).__name__}", "pass a question (a str) or a list of them")
    for i, q in enumerate(qs):
        if not isinstance(q, str):
            raise UavError(f"question {i + 1} is a {type(q).__name__}, not a string", "pass each question as a str")
    if not qs or not all(q.strip() for q in qs):
        raise UavError("a question is empty", "ask something, e.g. \"What is the topic of this text?\"")
    return qs


def _positions(positions, n_tok: int | None = None) -> np.ndarray:
    """Token positions as given (an int, a range, a list, an array or a tensor), checked: whole numbers, each once, in
    increasing order, inside the text's ``n_tok`` tokens. A rounded, re-ordered or repeated position would answer
    about other tokens than the ones asked for."""
    raw = positions.tolist() if isinstance(positions, (np.ndarray, torch.Tensor)) else positions
    items = list(raw) if isinstance(raw, (list, tuple, range)) else [raw]
    for p in items:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise UavError(f"position {p!r} is not a token index (a whole number), in positions {positions!r}",
                           "pass whole numbers, e.g. 3, or range(2, 6) for a window")
    if not items:
        raise UavError("no positions given", "pass positions=None for the whole text, or an index")
    for a, b in zip(items, items[1:]):
        if b <= a:
            raise UavError(f"positions {items} " + ("repeat " + str(b) if b == a else "are not in increasing order"),
                           "pass each position once, in increasing order, e.g. range(2, 6)")
    if n_tok is not None and (items[0] < 0 or items[-1] >= n_tok):
        raise UavError(f"positions {items} are outside this text's {n_tok} tokens", f"use 0 … {n_tok - 1}")
    return np.asarray(items, dtype=np.int64)


def explain(run: str, text: str, questions: list[str], *, max_new_tokens: int = 32, device: str = "auto",
            donor: str | None = None, cut: bool = False, context: str | None = None) -> list[tuple[str, str]]:
    """`uav explain`: answers to ``questions`` about the donor's activation on ``text`` (a thin wrapper over
    :meth:`Verbalizer.read`, without the controls; ``cut`` and ``context`` as there, the cut said on stderr)."""
    import sys

    if not text.strip():
        raise UavError("--text is empty", "give the donor some text to read")
    if context is not None and not context.strip():
        raise UavError("--context is empty", "give the text the donor reads first, or leave --context out")
    if not questions or not all(q.strip() for q in questions):
        raise UavError("--question is empty", "ask something, e.g. --question 'What is the topic?'")
    if max_new_tokens < 1:
        raise UavError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}", "e.g. --max-new-tokens 32")
    RunInfo.open(run)  # a missing or unfinished run is refused before anything loads
    v = Verbalizer.load(run, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cut is said below, as one line
        answers = v.read(text, questions, donor=donor, controls=False, max_new_tokens=max_new_tokens, cut=cut,
                         context=context)
    if v.last_cut:
        print(f"uav: note: the text is {v.last_cut[0]} tokens long: the donor read its first {v.last_cut[1]}",
              file=sys.stderr)
    return [(a.question, a.answer) for a in answers]
