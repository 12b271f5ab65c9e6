"""The Verbalizer's per-token answers and its token cap (the whole-text and hook paths are in test_tokens.py)."""

from __future__ import annotations

import numpy as np
import pytest

from uav_cache.errors import UavError
from uav_eval.verbalizer import Verbalizer
from uav_train.stream import Acts

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


def test_a_text_over_the_token_cap_is_cut_or_refused(v):
    """The store was harvested with max_length 40: read_acts cuts a longer text as the harvest did, or refuses it
    naming its length and the cap (cut=False, what the explorer page asks for)."""
    long = " ".join([TEXT] * 12)
    assert len(v.read_acts(long).positions) == 40
    with pytest.raises(UavError, match=r"the text is \d+ tokens long; the run's donor reads at most 40"):
        v.read_acts(long, cut=False)
    assert len(v.read_acts(TEXT, cut=False).positions) < 40
