"""The prompt template and the soft-token splice: the only place that knows where soft tokens go.

A prompt is the decoder's own chat template (when it has one) with one user turn::

    <soft_1> … <soft_k>\\n{question}

and the answer as the assistant turn. The k placeholder positions are recorded while the ids are built
(the rendered template is split at a sentinel, so no token is ever searched for), and at run time the
adapter's output *replaces* the input embeddings at exactly those positions. Decoders without a chat
template get ``{soft}\\n{question}\\nAnswer:`` and the answer after a space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SENTINEL = "\u2063SOFT\u2063"  # never produced by a tokenizer on real text; split point, not a token
STAGE1_QUESTION = "What does this representation encode?"
IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt: the loss is on the answer (+ end of turn) only
    soft_positions: list[int]


class PromptTemplate:
    """Builds token ids for ``[soft tokens] question → answer`` in one decoder's format."""

    def __init__(self, tokenizer, use_chat: bool | None = None):
        self.tok = tokenizer
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat = has_chat if use_chat is None else (use_chat and has_chat)
        self.placeholder_id = next(i for i in (tokenizer.pad_token_id, tokenizer.unk_token_id,
                                               tokenizer.eos_token_id, 0) if i is not None)
        self.system = self._empty_system_if_default() if self.use_chat else None
        self.end_text = self._end_of_turn() if self.use_chat else (tokenizer.eos_token or "")

    def _messages(self, content: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [{"role": "user", "content": content}]

    def _empty_system_if_default(self) -> str | None:
        """Some templates inject a default system prompt (SmolLM2: 17 tokens on every item, a third of a
        short prompt's compute). An explicit empty system turn replaces it where the template allows one;
        templates without a default are left exactly as they are."""
        plain = self.tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        try:
            empty = self.tok.apply_chat_template([{"role": "system", "content": ""}, {"role": "user", "content": "x"}],
                                                 tokenize=False)
        except Exception:  # templates that reject a system role (e.g. Gemma-2)
            return None
        return "" if len(empty) < len(plain) else None

    def _render(self, content: str) -> str:
        if self.use_chat:
            return self.tok.apply_chat_template(self._messages(content), tokenize=False, add_generation_prompt=True)
        bos = self.tok.bos_token if self._adds_bos() else ""
        return f"{bos}{content}\nAnswer:"

    def _adds_bos(self) -> bool:
        bos = self.tok.bos_token_id
        return bos is not None and self.tok("a", add_special_tokens=True)["input_ids"][:1] == [bos]

    def _end_of_turn(self) -> str:
        """What the template writes after an assistant message (e.g. ChatML's ``<|im_end|>``)."""
        mark = "\u2063ANSWER\u2063"
        full = self.tok.apply_chat_template(self._messages("q") + [{"role": "assistant", "content": mark}],
                                            tokenize=False)
        tail = full.split(mark, 1)[1].rstrip()
        return tail or (self.tok.eos_token or "")

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt(self, question: str, k: int, context_text: str | None = None) -> tuple[list[int], list[int]]:
        """Prompt ids (ready for the answer) and the k soft positions. ``k=0`` gives the question alone;
        ``context_text`` puts real text where the soft tokens would go (the input-text control)."""
        if context_text is not None:
            content = f"{context_text}\n{question}"
        else:
            content = f"{SENTINEL}\n{question}" if k > 0 else question
        pre, _, post = self._render(content).partition(SENTINEL)
        if SENTINEL not in content or context_text is not None:
            return self._ids(pre), []
        head = self._ids(pre)
        return head + [self.placeholder_id] * k + self._ids(post), list(range(len(head), len(head) + k))

    def answer_tokens(self, answer: str, max_tokens: int | None = None) -> list[int]:
        """The answer as the decoder writes it (first ``max_tokens``), without the end of turn."""
        ids = self._ids(("" if self.use_chat else " ") + answer)
        return ids[:max_tokens] if max_tokens is not None else ids

    def answer_ids(self, answer: str, max_tokens: int | None = None) -> list[int]:
        return self.answer_tokens(answer, max_tokens) + self._ids(self.end_text)

    def encode(self, question: str, answer: str | list[int], k: int, max_answer_tokens: int | None = None) -> Encoded:
        """The prompt and its answer, labelled on the answer only. ``answer`` as text (its end of turn appended) or
        as token ids, taken as they are (an answer exactly as the decoder generated it)."""
        ids, pos = self.prompt(question, k)
        ans = list(answer) if isinstance(answer, list) else self.answer_ids(answer, max_answer_tokens)
        return Encoded(ids + ans, [IGNORE] * len(ids) + ans, pos)

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS and the template's end-of-turn token."""
        ids = {self.tok.eos_token_id}
        end = self._ids(self.end_text)
        if len(end) == 1:
            ids.add(end[0])
        return sorted(i for i in ids if i is not None)


def collate(encs: list[Encoded], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch (right for training, left for generation); soft positions move with the padding. Items may hold
    different numbers of soft tokens: ``soft_mask`` marks the real entries of each row of ``soft_positions``."""
    width = max(len(e.input_ids) for e in encs)
    n = len(encs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    k = max((len(e.soft_positions) for e in encs), default=0)
    pos = torch.zeros((n, k), dtype=torch.long)
    soft_mask = torch.zeros((n, k), dtype=torch.bool)
    for i, e in enumerate(encs):
        off = width - len(e.input_ids) if left else 0
        ids[i, off:off + len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, off:off + len(e.labels)] = torch.tensor(e.labels)
        mask[i, off:off + len(e.input_ids)] = 1
        if e.soft_positions:
            pos[i, :len(e.soft_positions)] = torch.tensor(e.soft_positions) + off
            soft_mask[i, :len(e.soft_positions)] = True
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "soft_positions": pos, "soft_mask": soft_mask}


def splice(embeds: torch.Tensor, soft: torch.Tensor, positions: torch.Tensor, soft_mask: torch.Tensor | None = None,
           positions_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Put the soft tokens into the prompt embeddings (differentiable w.r.t. ``soft``). Every item's real soft tokens
    (``soft[b][soft_mask[b]]``, in order) go to its real placeholder positions (``positions[b][positions_mask[b]]``,
    in order); without masks every entry is real: ``embeds[b, positions[b, j]] = soft[b, j]``."""
    if soft.shape[1] == 0:
        return embeds
    if soft_mask is None and positions_mask is None:
        idx = positions.unsqueeze(-1).expand(-1, -1, embeds.shape[-1])
        return embeds.scatter(1, idx, soft.to(embeds.dtype))
    sm = soft_mask if soft_mask is not None else torch.ones(soft.shape[:2], dtype=torch.bool, device=soft.device)
    pm = positions_mask if positions_mask is not None else torch.ones_like(positions, dtype=torch.bool)
    if not torch.equal(sm.sum(1).cpu(), pm.sum(1).cpu()):
        raise ValueError(f"soft tokens per item {sm.sum(1).tolist()} do not match placeholders {pm.sum(1).tolist()}")
    rows = torch.arange(embeds.shape[0], device=embeds.device).unsqueeze(1).expand_as(positions)[pm]
    return embeds.index_put((rows, positions[pm]), soft[sm].to(embeds.dtype))
