"""The Verbalizer's per-token answers and its token cap (the whole-text and hook paths are in test_tokens.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from uav_cache.errors import UavError
from uav_eval.verbalizer import Verbalizer
from uav_train.stream import Acts
from helpers import run_uav

Q = "Which thing is named?"
TEXT = "Number 7 says the river is here today."


@pytest.fixture(scope="module")
def v(tiny_runs) -> Verbalizer:
    return Verbalizer.load(tiny_runs["tokens"], device="cpu", references=4)


def test_per_token_answers_each_position_as_asking_that_token_alone(v):
    """Batched over positions, each answer and score is what asking about that one token alone gives; the labels are
    the tokens' characters in the text, and the position-free controls are shared."""
    strip = v.per_token(TEXT, Q, max_new_tokens=4, batch_size=3)  # 3 does not divide the token count: a short batch
    acts = v.read_acts(TEXT)
    n = len(acts.positions)
    assert [a.position for a in strip] == list(range(n)) and n > 3
    assert "".join(a.token for a in strip if a.token).replace(" ", "") == TEXT.replace(" ", "")
    assert len({a.no_soft for a in strip}) == 1 and len({a.shuffled for a in strip}) == 1
    assert all(a.score is not None and np.isfinite(a.score) for a in strip)
    for p in (0, n // 2, n - 1):
        one = v.ask_acts(Acts(None, acts.tokens[p:p + 1], acts.positions[p:p + 1]), Q, max_new_tokens=4)[0]
        assert one.answer == strip[p].answer and one.position == p
        assert one.score == pytest.approx(strip[p].score, abs=1e-4)
    sub = v.per_token_acts(acts, Q, positions=range(1, 3), controls=False, max_new_tokens=4)
    assert [a.position for a in sub] == [1, 2] and [a.answer for a in sub] == [strip[1].answer, strip[2].answer]
    assert sub[0].score is None and sub[0].token is None  # no labels passed, no controls asked
    with pytest.raises(UavError, match="not among this text's tokens"):
        v.per_token_acts(acts, Q, positions=[n + 5])
    with pytest.raises(UavError, match="question is empty"):
        v.per_token_acts(acts, " ")


def test_a_pooled_only_run_has_no_per_token_answers(tiny_runs):
    pooled = Verbalizer.load(tiny_runs["pooled"], device="cpu", references=2)
    with pytest.raises(UavError, match="reads pooled vectors only"):
        pooled.per_token(TEXT, Q)
    assert pooled.read(TEXT, Q, max_new_tokens=3)[0].score is not None  # the whole text still answers


def test_a_text_over_the_token_cap_is_refused_or_cut_and_said(v):
    """The store was harvested with max_length 40: a longer text is refused everywhere (the API, `uav explain`, the
    explorer) naming its length and the cap, since an answer about its first 40 tokens would look like one about the
    whole; cut=True reads those 40, as the harvest cut its texts, and says so."""
    long = " ".join([TEXT] * 12)
    for ask in (lambda: v.read_acts(long), lambda: v.read(long, Q, max_new_tokens=2),
                lambda: v.per_token(long, Q, max_new_tokens=2)):
        with pytest.raises(UavError, match=r"the text is \d+ tokens long; the run's donor reads at most 40"):
            ask()
    with pytest.warns(UserWarning, match=r"the text is \d+ tokens long: the donor read its first 40"):
        assert len(v.read_acts(long, cut=True).positions) == 40
    assert v.last_cut[1] == 40 and v.last_cut[0] > 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text within the cap: nothing cut, nothing said
        assert len(v.read_acts(TEXT).positions) < 40 and v.last_cut is None


def test_uav_explain_refuses_a_long_text_or_cuts_it_with_a_note(tiny_runs, capsys):
    long = " ".join([TEXT] * 12)
    argv = ["explain", "--run", tiny_runs["tokens"], "--text", long, "--question", Q, "--device", "cpu",
            "--max-new-tokens", "2"]
    code, out, err = run_uav(argv, capsys)
    assert code == 2 and "tokens long; the run's donor reads at most 40" in err and "--cut" in err and not out, err
    code, out, err = run_uav([*argv, "--cut"], capsys)
    assert code == 0 and out.startswith(f"Q: {Q}\nA: ")
    assert [ln for ln in err.splitlines() if ln.startswith("uav:")] == \
        [f"uav: note: the text is {len(v_tokens(tiny_runs, long))} tokens long: the donor read its first 40"]


def v_tokens(tiny_runs, text: str) -> list[int]:
    """The donor's token ids of ``text`` (raw input, no cap)."""
    from transformers import AutoTokenizer

    from uav_cache.harvest import tokenize
    from uav_train.run import RunInfo

    src = RunInfo.open(tiny_runs["tokens"]).record.stores[0]
    return tokenize(AutoTokenizer.from_pretrained(src.donor_path), [text], 1 << 30, "raw")[0][0]


def test_non_finite_activations_are_refused_naming_the_layer_and_position(v, tiny_runs, monkeypatch):
    """A NaN or inf has no answer (the decoder given one answers ""): refused wherever activations come in, naming
    where it is: hidden states passed to ask, values that overflow the run's fp16 once stored, Acts built by hand, and
    a donor whose block output overflows while it reads a text."""
    import torch

    from uav_eval import verbalizer

    acts = v.read_acts(TEXT)
    n = len(acts.positions)
    h = {1: torch.randn(n, 32), 2: torch.randn(n, 32)}
    for bad, layer, pos in ((float("nan"), "model.layers.1", 3), (float("inf"), "model.layers.2", 5)):
        hid = {k: t.clone() for k, t in h.items()}
        hid[int(layer[-1])][pos, 7] = bad
        with pytest.raises(UavError, match=rf"hidden states of {layer} are not finite \(NaN or inf\) at position {pos}"):
            v.ask(hid, Q, max_new_tokens=2)
    hid = {k: t.clone() for k, t in h.items()}
    hid[1][4, 0] = 1e6  # finite in float32, inf once stored as the run's fp16
    with pytest.raises(UavError, match=r"token vector of model.layers.1 at position 4 is not finite .* overflow fp16"):
        v.ask(hid, Q, max_new_tokens=2)
    tokens = acts.tokens.clone()
    tokens[2, 0, 0] = float("nan")
    with pytest.raises(UavError, match="token vector of model.layers.1 at position 2 is not finite"):
        v.ask_acts(Acts(acts.pooled, tokens, acts.positions), Q, max_new_tokens=2)
    pooled = acts.pooled.clone()
    pooled[0, 1] = float("inf")
    with pytest.raises(UavError, match="the mean read-out of model.layers.2 is not finite"):
        v.ask_acts(Acts(pooled, acts.tokens, acts.positions), Q, max_new_tokens=2)
    with pytest.raises(UavError, match="token vector of model.layers.1 at position 2 is not finite"):
        v.per_token_acts(Acts(None, tokens, acts.positions), Q, max_new_tokens=2)

    real = verbalizer.load

    def overflowing(spec, **kw):  # a donor whose block 2 output exceeds fp16 from the third token on
        model, tok = real(spec, **kw)

        def hook(_module, _args, out):
            hs = out[0] if isinstance(out, tuple) else out
            hs[:, 2:] = 1e5
            return out
        model.model.layers[2].register_forward_hook(hook)
        return model, tok

    monkeypatch.setattr(verbalizer, "load", overflowing)
    with pytest.raises(UavError, match=r"the donor's output at model.layers.2, position 2 \('.+'\), exceeds ±65504, "
                                       "beyond the fp16 the run's store holds"):
        v.read(TEXT, Q, max_new_tokens=2)


def test_inputs_of_the_wrong_type_or_positions_out_of_order_are_refused_with_the_reason(v):
    import torch

    acts = v.read_acts(TEXT)
    n = len(acts.positions)
    h = {1: torch.randn(n, 32), 2: torch.randn(n, 32)}
    for text, got in ((7, "int"), (["a", "text"], "list"), (None, "NoneType")):
        with pytest.raises(UavError, match=f"the text is a {got}, not a string"):
            v.read(text, Q)
    for qs, problem in ((3, "the questions are a int"), ([Q, 5], "question 2 is a int, not a string"),
                        ([Q, " "], "a question is empty")):
        with pytest.raises(UavError, match=problem):
            v.ask(h, qs, max_new_tokens=2)
    for positions, problem in (([3, 1], r"positions \[3, 1\] are not in increasing order"),
                               ([2, 2], r"positions \[2, 2\] repeat 2"),
                               ([1.5, 2.5], "position 1.5 is not a token index"),
                               (np.array([1.0, 2.0]), "position 1.0 is not a token index"),
                               (True, "position True is not a token index"),
                               ([], "no positions given"), ([n - 1, n], "outside this text's")):
        with pytest.raises(UavError, match=problem):
            v.ask(h, Q, positions=positions, max_new_tokens=2)
    with pytest.raises(UavError, match="positions .* repeat 1"):
        v.per_token_acts(acts, Q, positions=[1, 1], max_new_tokens=2)
    for t, dtype in ((torch.randn(n, 32, dtype=torch.complex64), "complex64"), (torch.ones(n, 32, dtype=torch.bool),
                                                                               "bool"),
                     (torch.ones(n, 32, dtype=torch.int64), "int64")):
        with pytest.raises(UavError, match=f"hidden states of model.layers.1 are {dtype}, not real floating-point"):
            v.ask({1: t, 2: h[2]}, Q, max_new_tokens=2)
    assert v.ask(h, Q, positions=range(2, 5), max_new_tokens=2)[0].answer is not None  # a window, as given
    assert v.ask(h, Q, positions=np.int64(3), max_new_tokens=2)[0].position == 3


def test_uav_explain_refuses_a_text_the_donor_reads_beyond_fp16_in_one_line(tiny_runs, monkeypatch, capsys):
    from uav_eval import verbalizer

    real = verbalizer.load

    def overflowing(spec, **kw):  # a donor whose block 1 output exceeds fp16 from the second token on
        model, tok = real(spec, **kw)

        def hook(_module, _args, out):
            (out[0] if isinstance(out, tuple) else out)[:, 1:] = 1e5
            return out
        model.model.layers[1].register_forward_hook(hook)
        return model, tok

    monkeypatch.setattr(verbalizer, "load", overflowing)
    code, out, err = run_uav(["explain", "--run", tiny_runs["tokens"], "--text", TEXT, "--question", Q, "--device",
                              "cpu"], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("uav:")]
    assert code == 2 and not out and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("uav: error: the donor's output at model.layers.") and ", position 1 (" in lines[0]
    assert "exceeds ±65504, beyond the fp16 the run's store holds" in lines[0]
