"""Shared fixtures: tiny random models + tokenizers saved as HF folders, built offline in a second or two.

The folders are session-scoped: treat them as read-only (copy one with shutil.copytree to modify it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches a model hub on our machines

SENTENCES = [
    "The capital of France is Paris.",
    "The cat sat on the mat and looked at the dog.",
    "Gradient descent minimises a loss over model parameters.",
    "Paris, Berlin and Rome are cities in Europe.",
    "A language model predicts the next token from the previous ones.",
    "Explain the activation in plain English, please.",
    "user assistant system: hello, how are you? I am fine, thanks!",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(specials: list[str], vocab_size: int = 400, **kw):
    """Byte-level BPE trained on SENTENCES: encodes any text (no <unk>) and decodes it back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def _save(tmp: Path, model: torch.nn.Module, tok) -> Path:
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """Tiny random Llama (3 blocks, d 32) with a ChatML chat template, eos <|im_end|>, pad <pad>."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                         eos_token="<|im_end|>", pad_token="<pad>", bos_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      tie_word_embeddings=True)
    return _save(tmp_path_factory.mktemp("tiny_llama"), LlamaForCausalLM(cfg).eval(), tok)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    """Tiny random Gemma-3 text model (4 blocks, d 32), no chat template, like the embedded gemma3-270m."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = make_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], eos_token="<eos>", pad_token="<pad>",
                         bos_token="<bos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                           sliding_window=16, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.bos_token_id)
    return _save(tmp_path_factory.mktemp("tiny_gemma"), Gemma3ForCausalLM(cfg).eval(), tok)


# The registry's other families (uav_cache/registry/*.toml), built from their configs' classes with the real models'
# special tokens but no chat template: the real templates are not available offline, so these decoders take uav's
# no-template prompt. Shapes are tiny; what each family does differently (tied or untied embeddings, q/k norms,
# sliding windows, a vision tower beside the language model) is kept.

@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """Tiny random Qwen3 (3 blocks, d 32, q/k norms, tied embeddings), Qwen's specials, no pad/eos distinction lost."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = make_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return _save(tmp_path_factory.mktemp("tiny_qwen3"), Qwen3ForCausalLM(cfg).eval(), tok)


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    """Tiny random Mistral (3 blocks, d 32, sliding window 16, untied), <s>/</s> and no pad token, as Mistral ships."""
    from transformers import MistralConfig, MistralForCausalLM

    tok = make_tokenizer(["<unk>", "<s>", "</s>"], bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_bos_token = True
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                        sliding_window=16, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    return _save(tmp_path_factory.mktemp("tiny_mistral"), MistralForCausalLM(cfg).eval(), tok)


@pytest.fixture(scope="session")
def tiny_yi_dir(tmp_path_factory) -> Path:
    """Tiny random Yi-1.5 (a Llama architecture: untied embeddings, GQA), Yi's specials, base model: no template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(["<unk>", "<|startoftext|>", "<|endoftext|>"], bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    return _save(tmp_path_factory.mktemp("tiny_yi"), LlamaForCausalLM(cfg).eval(), tok)


@pytest.fixture(scope="session")
def tiny_gemma3_mm_dir(tmp_path_factory) -> Path:
    """Tiny random Gemma-3 as the hub's 4B/12B ship it: Gemma3ForConditionalGeneration, a SigLIP vision tower beside
    the language model (whose blocks are model.language_model.layers.N), Gemma's specials, no template."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tok = make_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                          "<end_of_image>", "<image_soft_token>"], eos_token="<eos>", pad_token="<pad>",
                         bos_token="<bos>", unk_token="<unk>")
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(0)
    cfg = Gemma3Config(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                        max_position_embeddings=256, sliding_window=16, pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id),
                       vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=28, patch_size=14),
                       mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"),
                       eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"),
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return _save(tmp_path_factory.mktemp("tiny_gemma3_mm"), Gemma3ForConditionalGeneration(cfg).eval(), tok)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """Tiny random BERT encoder (2 blocks, d 32) with [CLS]/[SEP]/[PAD] tokens."""
    from transformers import BertConfig, BertModel

    tok = make_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", unk_token="[UNK]",
                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    return _save(tmp_path_factory.mktemp("tiny_bert"), BertModel(cfg).eval(), tok)


def pytest_collection_modifyitems(config, items):
    """Slow tests (real embedded models, minutes) run only when asked for with ``-m slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models: one intra-op thread is faster, and many times faster on a busy 2-core machine
    (measured: a tiny harvest 0.3 s on one thread, several seconds on two under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield n
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _all_threads_for_slow_tests(request, _one_torch_thread):
    """Slow tests run the real embedded models: give them every thread back."""
    if request.node.get_closest_marker("slow") is None:
        yield
        return
    torch.set_num_threads(_one_torch_thread)
    yield
    torch.set_num_threads(1)


THINGS = ["apple", "river", "castle", "piano", "garden", "rocket"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """Two tiny trained runs on one store of 48 texts that each name a thing ("Which thing is named?"), harvested
    with every token of blocks 1 and 2 and a token cap of 40: ``tokens`` reads block 2's mean read-out and block 1's
    token vectors (whole texts and single tokens), ``pooled`` reads the read-out only. A few seconds on a CPU: for the
    Verbalizer, the example script, the explorer page. Read-only."""
    import json

    from uav_cache.harvest import HarvestConfig, harvest
    from uav_train.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_runs")
    data = root / "things.jsonl"
    with data.open("w") as f:
        for i in range(48):
            split = "train" if i % 6 < 4 else ("val" if i % 6 == 4 else "test")
            f.write(json.dumps({"id": f"t{i:02d}", "text": f"Number {i} says the {THINGS[i % 6]} is here today.",
                                "task": "fact", "source": "things", "split": split,
                                "qa": [{"question": "Which thing is named?", "answer": THINGS[i % 6]}]}) + "\n")
    harvest(HarvestConfig(donor=str(tiny_llama_dir), data=str(data), out=str(root / "store"), layers=[1, 2],
                          positions="all", max_length=40, shard_rows=16, chunk_rows=8, progress=False))
    common = dict(stores=[str(root / "store")], decoder=str(tiny_llama_dir), adapter="mlp",
                  adapter_options={"k": 2, "hidden": 32, "skip": True}, layers=[2], readout="mean", stage="2",
                  steps=24, batch_size=4, eval_every=12, val_items=8, checkpoint_every=24, progress=False)
    return {"tokens": train(TrainConfig(out=str(root / "tokens"), token_layers=[1], token_adapter="pervector",
                                        token_adapter_options={"hidden": 32}, forms={"full": 1, "token": 1}, **common)),
            "pooled": train(TrainConfig(out=str(root / "pooled"), **common)),
            "store": root / "store"}
