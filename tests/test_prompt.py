"""Prompt template (ChatML and no-template decoders), collate padding and the soft-token splice."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from uav_train.prompt import IGNORE, SENTINEL, STAGE1_QUESTION, Encoded, PromptTemplate, collate, splice

QUESTION, ANSWER = "What colour is the cat?", "red"


@pytest.fixture(scope="module")
def llama_tok(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def gemma_tok(tiny_gemma_dir):
    return AutoTokenizer.from_pretrained(tiny_gemma_dir)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def check_soft_block(t: PromptTemplate, e: Encoded, k: int) -> None:
    pos = e.soft_positions
    assert len(pos) == k and pos == list(range(pos[0], pos[0] + k))  # contiguous
    assert all(e.input_ids[p] == t.placeholder_id for p in pos)
    assert len(e.labels) == len(e.input_ids)


def test_chatml_prompt(llama_tok):
    t = PromptTemplate(llama_tok)
    assert t.use_chat and t.end_text == "<|im_end|>"
    assert t.placeholder_id == llama_tok.pad_token_id
    k = 3
    e = t.encode(QUESTION, ANSWER, k)
    check_soft_block(t, e, k)
    a = e.soft_positions[0]
    # the soft block follows the user-turn header directly…
    assert llama_tok.decode(e.input_ids[:a]) == "<|im_start|>user\n"
    # …and the question comes after a newline, then the assistant header
    after = llama_tok.decode(e.input_ids[a + k:])
    assert after.startswith(f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    # loss only on the answer and the end-of-turn token
    ans = ids(llama_tok, ANSWER) + [llama_tok.convert_tokens_to_ids("<|im_end|>")]
    n_prompt = len(e.input_ids) - len(ans)
    assert e.labels[:n_prompt] == [IGNORE] * n_prompt
    assert e.labels[n_prompt:] == ans == e.input_ids[n_prompt:]
    assert llama_tok.decode(e.input_ids[n_prompt:]) == "red<|im_end|>"
    # the whole prompt equals the chat template rendered with placeholders in place of the sentinel
    rendered = llama_tok.apply_chat_template([{"role": "user", "content": "<pad>" * k + "\n" + QUESTION}],
                                             tokenize=False, add_generation_prompt=True)
    assert llama_tok.decode(e.input_ids[:n_prompt]) == rendered
    assert SENTINEL not in llama_tok.decode(e.input_ids)
    assert t.stop_ids() == [llama_tok.convert_tokens_to_ids("<|im_end|>")]


def test_no_template_prompt(gemma_tok):
    t = PromptTemplate(gemma_tok)
    assert not t.use_chat and t.end_text == "<eos>"
    k = 2
    e = t.encode(QUESTION, ANSWER, k)
    check_soft_block(t, e, k)
    a = e.soft_positions[0]
    bos = [gemma_tok.bos_token_id] if t._adds_bos() else []
    assert e.input_ids[:a] == bos  # nothing but (maybe) BOS before the soft block
    assert gemma_tok.decode(e.input_ids[a + k:]) == f"\n{QUESTION}\nAnswer: {ANSWER}<eos>"
    ans = ids(gemma_tok, " " + ANSWER) + [gemma_tok.eos_token_id]
    n_prompt = len(e.input_ids) - len(ans)
    assert e.labels == [IGNORE] * n_prompt + ans
    assert t.stop_ids() == [gemma_tok.eos_token_id]
    # use_chat=True cannot invent a template the tokenizer lacks
    assert not PromptTemplate(gemma_tok, use_chat=True).use_chat


def test_use_chat_false_on_a_chat_tokenizer(llama_tok):
    t = PromptTemplate(llama_tok, use_chat=False)
    e = t.encode(QUESTION, ANSWER, 2)
    assert "<|im_start|>" not in llama_tok.decode(e.input_ids)
    assert llama_tok.decode(e.input_ids[e.soft_positions[-1] + 1:]).endswith("Answer: red<|im_end|>")


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_k0_and_context_text(which, llama_tok, gemma_tok):
    tok = llama_tok if which == "llama" else gemma_tok
    t = PromptTemplate(tok)
    p0, pos0 = t.prompt(QUESTION, 0)
    assert pos0 == [] and t.placeholder_id not in p0
    assert QUESTION in tok.decode(p0)
    e0 = t.encode(QUESTION, ANSWER, 0)
    assert e0.soft_positions == [] and e0.input_ids[:len(p0)] == p0
    ctx = "The cat sat on the mat."
    pc, posc = t.prompt(QUESTION, 4, context_text=ctx)
    assert posc == []
    text = tok.decode(pc)
    assert f"{ctx}\n{QUESTION}" in text
    # the context text sits exactly where the soft block would be
    pk, posk = t.prompt(QUESTION, 4)
    head, tail = tok.decode(pk[:posk[0]]), tok.decode(pk[posk[-1] + 1:])
    assert text == head + ctx + tail
    # stage-1 target: the donor's text after the fixed question, cut at max_answer_tokens
    long = t.encode(STAGE1_QUESTION, "Gradient descent minimises a loss over model parameters.", 2, max_answer_tokens=3)
    body = [lab for lab in long.labels if lab != IGNORE]
    assert len(body) == 3 + len(ids(tok, t.end_text))


def test_collate_right_and_left_padding(llama_tok):
    t = PromptTemplate(llama_tok)
    encs = [t.encode("Q?", "red", 2), t.encode(QUESTION, "a longer answer here", 2), t.encode("Hi", "x", 2)]
    lens = [len(e.input_ids) for e in encs]
    width = max(lens)
    pad = llama_tok.pad_token_id
    for left in (False, True):
        b = collate(encs, pad, left=left)
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (3, width)
        assert b["soft_positions"].shape == (3, 2)
        for i, e in enumerate(encs):
            off = width - lens[i] if left else 0
            assert b["soft_positions"][i].tolist() == [p + off for p in e.soft_positions]
            row = b["input_ids"][i]
            assert row[off:off + lens[i]].tolist() == e.input_ids
            assert b["labels"][i, off:off + lens[i]].tolist() == e.labels
            assert b["attention_mask"][i].tolist() == [0] * off + [1] * lens[i] + [0] * (width - lens[i] - off)
            pad_slots = torch.ones(width, dtype=torch.bool)
            pad_slots[off:off + lens[i]] = False
            assert (row[pad_slots] == pad).all() and (b["labels"][i][pad_slots] == IGNORE).all()
            # soft positions point at placeholders in the padded batch too
            assert (row[b["soft_positions"][i]] == t.placeholder_id).all()
            assert b["attention_mask"][i][b["soft_positions"][i]].all()
    empty = collate([t.encode("Q?", "red", 0)], pad)
    assert empty["soft_positions"].shape == (1, 0)


def test_splice_replaces_exactly_the_soft_rows():
    torch.manual_seed(0)
    emb = torch.randn(2, 7, 5)
    before = emb.clone()
    pos = torch.tensor([[1, 2, 3], [3, 4, 5]])
    soft = torch.randn(2, 3, 5, requires_grad=True)
    out = splice(emb, soft, pos)
    assert out.shape == emb.shape
    for b in range(2):
        for j in range(7):
            if j in pos[b]:
                assert torch.equal(out[b, j], soft[b, pos[b].tolist().index(j)].detach())
            else:
                assert torch.equal(out[b, j], emb[b, j])
    assert torch.equal(emb, before)  # the input embeddings are not modified in place
    # differentiable w.r.t. the soft tokens: d(sum(out·w))/d soft = w at the soft positions
    w = torch.randn_like(out)
    (out * w).sum().backward()
    want = torch.stack([w[b, pos[b]] for b in range(2)])
    assert torch.equal(soft.grad, want)
    # k = 0: embeddings untouched
    assert torch.equal(splice(emb, soft[:, :0], pos[:, :0]), emb)


def test_splice_dtype_and_grad_through_embeddings():
    emb = torch.randn(1, 4, 3, dtype=torch.bfloat16, requires_grad=True)
    soft = torch.randn(1, 1, 3, requires_grad=True)
    out = splice(emb, soft, torch.tensor([[2]]))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert emb.grad[0, 2].abs().sum() == 0 and (emb.grad[0, [0, 1, 3]] == 1).all()
    assert (soft.grad == 1).all()


def test_splice_puts_each_items_real_soft_tokens_at_its_own_placeholders(llama_tok):
    """Items with different numbers of soft tokens in one batch: item i's real soft tokens (by mask, in order) go
    to its placeholders, nothing else moves, and the gradient reaches exactly the real soft tokens."""
    t = PromptTemplate(llama_tok)
    encs = [t.encode("What colour?", "red", k) for k in (3, 0, 5)]
    for left in (False, True):
        b = collate(encs, llama_tok.pad_token_id, left=left)
        assert b["soft_mask"].sum(1).tolist() == [3, 0, 5]
        emb = torch.zeros(3, b["input_ids"].shape[1], 4)
        soft = torch.arange(3 * 6 * 4, dtype=torch.float).view(3, 6, 4).requires_grad_()
        soft_mask = torch.tensor([[False, True, True, True, False, False], [False] * 6, [True] * 5 + [False]])
        out = splice(emb, soft, b["soft_positions"], soft_mask, b["soft_mask"])
        for i, e in enumerate(encs):
            off = b["input_ids"].shape[1] - len(e.input_ids) if left else 0
            real = soft[i][soft_mask[i]]
            assert torch.equal(out[i, [p + off for p in e.soft_positions]], real.detach())
            others = [j for j in range(out.shape[1]) if j - off not in e.soft_positions]
            assert not out[i, others].any()
        out.sum().backward()
        assert torch.equal(soft.grad[..., 0] != 0, soft_mask)
    with pytest.raises(ValueError, match="do not match"):
        splice(emb, soft.detach(), b["soft_positions"], torch.ones(3, 6, dtype=torch.bool), b["soft_mask"])
