"""Bad inputs and damaged files, swept through every command and kept as tests so that they stay swept.

Each case is one thing a new user did to copies of the demo's stores and runs, and what uav must answer: one
`uav: error:` line naming the problem and a fix that exists (exit 2), `BROKEN …` from verify (exit 1), or a refusal
before any work starts. Tiny random models; everything damaged is a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import error_lines, run_uav

from uav_cache.errors import UavError
from uav_cache.harvest import HarvestConfig, harvest
from uav_cache.store import Store
from uav_train.trainer import TrainConfig, train

LABELS = ["red", "green", "blue"]
LAYER = "model.layers.1"


def _colours(path: Path, qa: bool = True) -> Path:
    with path.open("w") as f:
        for i in range(24):
            lab = LABELS[i % 3]
            f.write(json.dumps({"id": f"ex{i:02d}", "text": f"The thing is {lab}, number {i}.", "label": lab,
                                "task": "classification", "source": "toy", "split": ("train", "train", "val", "test")[i % 4],
                                "qa": [{"question": "What colour is it?", "answer": lab}] if qa else []}) + "\n")
    return path


def _harvest(donor: Path, data: Path, out: Path, **kw) -> Path:
    harvest(HarvestConfig(donor=str(donor), data=str(data), out=str(out), layers=[1], shard_rows=8, chunk_rows=4,
                          progress=False, device="cpu", rank=0, world=1, **kw))
    return out


def _tcfg(store: Path, decoder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(stores=[str(store)], out=str(out), decoder=str(decoder), adapter="mlp", adapter_options={"k": 2, "hidden": 32},
                stage1_steps=1, steps=1, batch_size=4, eval_every=1, val_items=4, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llama_dir) -> Path:
    """A store of 24 colour texts (3 shards of 8 rows, 12 train / 6 val / 6 test) and a finished tiny run on it."""
    root = tmp_path_factory.mktemp("sweep")
    _harvest(tiny_llama_dir, _colours(root / "colours.jsonl"), root / "store")
    train(_tcfg(root / "store", tiny_llama_dir, root / "run"))
    return root


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the store and the run to damage; the run records the copy's path."""
    shutil.copytree(base / "store", tmp_path / "store")
    shutil.copytree(base / "run", tmp_path / "run")
    shutil.copy(base / "colours.jsonl", tmp_path / "colours.jsonl")
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    for s in rec["stores"]:
        s["path"] = s["abspath"] = str(tmp_path / "store")
    (tmp_path / "run" / "config.json").write_text(json.dumps(rec))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(result: tuple[int, str, str], *words: str) -> str:
    """Exit 2, one `uav: error:` line naming ``words``, no traceback; returns the line."""
    code, _out, err = result
    lines = error_lines(err)
    assert code == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("uav: error:"), (code, err)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def broken(result: tuple[int, str, str], *words: str) -> str:
    """`uav store verify` found damage: exit 1, BROKEN lines naming ``words``."""
    code, _out, err = result
    assert code == 1 and "Traceback" not in err and error_lines(err), (code, err)
    assert all(ln.startswith("BROKEN ") for ln in error_lines(err)), err
    for w in words:
        assert w in err, (w, err)
    return err


EVAL = ["--limit", "1", "--controls", "none", "--no-similarity", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------- damaged tables

TABLE_DAMAGE = {
    "deleted examples/record chunks": (lambda s: shutil.rmtree(s / "examples" / "record" / "c"), "examples/record/c/0"),
    "garbled examples/split chunk": (lambda s: (s / "examples" / "split" / "c" / "0").write_bytes(b"\x00" * 40),
                                     "examples/split"),
    "deleted tokens/ids chunks": (lambda s: shutil.rmtree(s / "tokens" / "ids" / "c"), "tokens/ids/c/0"),
    "one flipped byte in examples/n_tokens": (lambda s: _flip(s / "examples" / "n_tokens" / "c" / "1"), "examples/n_tokens"),
}


def _flip(path: Path, at: int = -6) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", sorted(TABLE_DAMAGE))
def test_damaged_tables_are_broken_for_verify_and_refused_before_training_or_evaluation(case, work, capsys,
                                                                                        tiny_llama_dir):
    damage, where = TABLE_DAMAGE[case]
    damage(work / "store")
    broken(run_uav(["store", "verify", "store"], capsys), where)
    refused(run_uav(["train", "--store", "store", "--decoder", tiny_llama_dir, "--out", "runs/new", "--device", "cpu"],
                    capsys), "store store is damaged", where)
    assert not (work / "runs").exists()  # refused before anything was written
    refused(run_uav(["eval", "run", *EVAL], capsys), "is damaged", where)
    assert not list((work / "run").glob("results-limit1*.json"))


# ---------------------------------------------------------------------------------------------- incomplete stores

def test_an_incomplete_store_is_not_complete_and_is_refused_unless_allowed(work, capsys, tiny_llama_dir):
    (work / "store" / "_commits" / "s00002.json").unlink()  # finalized once ("complete" in its metadata)
    code, out, _ = run_uav(["store", "info", "store"], capsys)
    assert code == 0 and "committed 2/3" in out and "(complete)" not in out and "INCOMPLETE" in out
    train_args = ["train", "--store", "store", "--decoder", tiny_llama_dir, "--out", "runs/new", "--device", "cpu",
                  "--stage1-steps", "1", "--steps", "1", "--batch-size", "4"]
    refused(run_uav(train_args, capsys), "incomplete: 2 of 3 shards committed", "--allow-incomplete")
    assert not (work / "runs").exists()
    refused(run_uav(["eval", "run", *EVAL], capsys), "incomplete", "--allow-incomplete")
    code, _, err = run_uav([*train_args, "--allow-incomplete"], capsys)
    assert code == 0, err
    rec = json.loads((work / "runs" / "new" / "config.json").read_text())
    assert rec["stores"][0]["committed_rows"] == 16 and rec["stores"][0]["n_rows"] == 24  # the rows it really had


def test_a_store_that_lost_its_root_metadata_is_broken_not_absent(work, capsys, tiny_llama_dir):
    (work / "store" / "zarr.json").unlink()
    broken(run_uav(["store", "verify", "store"], capsys), "root zarr.json", "missing")
    refused(run_uav(["store", "info", "store"], capsys), "is damaged", "zarr.json")
    refused(run_uav(["harvest", "--donor", tiny_llama_dir, "--data", "colours.jsonl", "--out", "store", "--layers", "1"],
                    capsys), "zarr.json")


# ---------------------------------------------------------------------------------------------- damaged runs

RUN_DAMAGE = {
    "lora/ deleted": (lambda r: shutil.rmtree(r / "lora"), "lora"),
    "adapter.safetensors truncated": (lambda r: _truncate(r / "adapter.safetensors"), "adapter.safetensors"),
    "lora weights truncated": (lambda r: _truncate(r / "lora" / "adapter_model.safetensors"), "adapter_model.safetensors"),
    "config.json garbled": (lambda r: (r / "config.json").write_text('{"status": "compl'), "config.json"),
    "uav_adapter.json garbled": (lambda r: (r / "uav_adapter.json").write_text("{"), "uav_adapter.json"),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("case", sorted(RUN_DAMAGE))
def test_a_damaged_run_is_refused_naming_the_file_before_any_model_loads(case, work, capsys, monkeypatch):
    damage, where = RUN_DAMAGE[case]
    damage(work / "run")
    import uav_cache.models as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded for a damaged run")
    monkeypatch.setattr(models, "load", no_load)
    refused(run_uav(["eval", "run", *EVAL], capsys), where)
    refused(run_uav(["explain", "--run", "run", "--text", "The thing is red."], capsys), where)


def test_transfer_from_a_damaged_lora_leaves_no_half_made_run(work, capsys, tiny_llama_dir):
    _truncate(work / "run" / "lora" / "adapter_model.safetensors")
    refused(run_uav(["train", "--store", "store", "--decoder", tiny_llama_dir, "--out", "runs/transfer", "--stage", "2",
                     "--frozen-decoder", "run", "--device", "cpu", "--batch-size", "4"], capsys), "adapter_model.safetensors")
    assert not (work / "runs").exists()


# ---------------------------------------------------------------------------------------------- batch and memory

def test_a_batch_larger_than_the_training_split_is_refused_before_the_first_step(work, capsys, tiny_llama_dir):
    refused(run_uav(["train", "--store", "store", "--decoder", tiny_llama_dir, "--out", "runs/big", "--device", "cpu",
                     "--batch-size", "100000"], capsys), "batch_size 100000 is larger than the training split",
            "--batch-size 12")
    assert not (work / "runs").exists()


def test_a_step_estimated_beyond_free_memory_is_refused(work, tiny_llama_dir, monkeypatch):
    from uav_train import budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(UavError, match="needs about .* GiB \\(estimated\\), more than the 0.0 GiB free") as e:
        train(_tcfg(work / "store", tiny_llama_dir, work / "runs" / "mem"))
    assert "--grad-checkpointing" in e.value.fix and not (work / "runs").exists()


# ---------------------------------------------------------------------------------------------- fix lines

def test_a_corrupt_chunk_in_evaluation_does_not_suggest_a_flag_eval_lacks(work, capsys):
    f = work / "store" / "acts" / LAYER / "last" / "c" / "2" / "0"  # the run reads `last`; test rows 19 and 23
    raw = bytearray(f.read_bytes())
    raw[:32] = bytes(32)
    f.write_bytes(bytes(raw))
    line = refused(run_uav(["eval", "run", "--controls", "none", "--no-similarity", "--device", "cpu"], capsys),
                   "CRC32C")
    assert "--skip-corrupt" not in line.replace("uav train --skip-corrupt", "")


def test_a_setting_without_a_flag_is_not_told_to_use_one():
    with pytest.raises(UavError) as e:
        TrainConfig.from_dict({"warmup": -1})
    assert "--warmup" not in e.value.fix and "warmup = … in the recipe" in e.value.fix
    with pytest.raises(UavError) as e:
        TrainConfig.from_dict({"lr_adapter": 0})
    assert "--lr-adapter" in e.value.fix  # that flag exists
    import dataclasses
    import inspect

    from uav_train.cli import train_command
    from uav_train.trainer.config import FLAGS
    # the settings a fix line offers as flags are exactly the TrainConfig fields `uav train` takes
    assert FLAGS == set(inspect.signature(train_command).parameters) & {f.name for f in dataclasses.fields(TrainConfig)}


def test_an_existing_file_as_out_folder_gets_the_right_fix(work, capsys):
    (work / "taken").write_text("a file")
    line = refused(run_uav(["data", "build", "--out", "taken"], capsys), "taken")
    assert "choose another path" in line and "disk space" not in line


def test_a_split_with_rows_but_no_questions_is_told_so(work, tiny_llama_dir):
    from uav_train.stream import ItemStream

    store = _harvest(tiny_llama_dir, _colours(work / "noqa.jsonl", qa=False), work / "noqa")
    with pytest.raises(UavError) as e:
        ItemStream([Store(store)], "train", mode="qa")
    assert "qa pairs" in e.value.fix and "harvest a dataset that has this split" not in e.value.fix


def test_a_utf8_byte_order_mark_is_not_malformed_json(work):
    from uav_cache.examples import load_examples

    p = work / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "The cat sat."}).encode() + b"\n")
    assert [e["id"] for e in load_examples(str(p)).examples] == ["a"]


def test_an_unknown_decoder_is_told_about_decoder_not_donor(work, capsys):
    line = refused(run_uav(["train", "--store", "store", "--decoder", "nope", "--out", "runs/x", "--device", "cpu"],
                           capsys), "unknown model 'nope'")
    assert "--decoder /path" in line and "--donor" not in line


def test_a_classification_example_without_label_is_told_to_add_one(work):
    from uav_cache.examples.schema import check_example

    with pytest.raises(UavError) as e:
        check_example({"id": "a", "text": "hi", "task": "classification", "source": "s", "split": "train", "qa": []})
    assert '"label"' in e.value.fix and "label" in e.value.problem


# ---------------------------------------------------------------------------------------------- accepted but meaningless

def test_an_empty_answer_is_refused_at_loading(work):
    from uav_cache.examples import load_examples

    p = work / "empty.jsonl"
    p.write_text(json.dumps({"id": "a", "text": "The cat sat.", "task": "fact",
                             "qa": [{"question": "Who sat?", "answer": " "}]}) + "\n")
    with pytest.raises(UavError, match="line 1 .*empty question or answer"):
        load_examples(str(p))


@pytest.mark.parametrize("option", ["k", "hidden"])
def test_an_adapter_of_zero_size_is_refused(option):
    with pytest.raises(UavError, match=f"option {option} = 0 must be ≥ 1"):
        TrainConfig.from_dict({"adapter": "mlp", "adapter_options": {option: 0}})


def test_a_control_given_twice_is_refused(work, capsys):
    refused(run_uav(["eval", "run", "--controls", "shuffled,shuffled", "--device", "cpu"], capsys), "given twice")


def test_an_empty_question_is_refused(work, capsys):
    refused(run_uav(["explain", "--run", "run", "--text", "The thing is red.", "--question", " "], capsys),
            "--question is empty")


def test_a_run_folder_inside_its_store_is_refused(work, capsys, tiny_llama_dir):
    for out in ("store", "store/run"):
        refused(run_uav(["train", "--store", "store", "--decoder", tiny_llama_dir, "--out", out, "--device", "cpu"],
                        capsys), "store")
    assert Store(work / "store").verify() == [] and not (work / "store" / "run").exists()


def test_a_store_path_with_a_comma_can_be_given(work):
    from uav_train.cli import store_paths

    shutil.copytree(work / "store", work / "a,b")
    assert store_paths(["a,b"]) == ["a,b"]
    assert store_paths(["store,a,b"]) == ["store", "a", "b"]  # no such path: a list, as before
    assert store_paths(["store", "a,b"]) == ["store", "a,b"]  # --store is repeatable


# ---------------------------------------------------------------------------------------------- help and messages

def test_help_keeps_brackets_shows_defaults_and_is_not_cut(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_uav(["train", "--help"], capsys)
    assert code == 0 and "[train] table" in out
    assert "(default: 8)" in " ".join(out.split())  # --batch-size
    assert "demo.toml" in out  # where the README's settings are
    code, out, _ = run_uav(["harvest", "--help"], capsys)
    assert code == 0 and "--no-trust-remote-code" in out and "uav_cache/registry/*.toml" in out  # rich cut both at 80
    code, out, _ = run_uav(["eval", "--help"], capsys)
    from uav_eval.methods import CONTROLS
    assert code == 0 and ",".join(CONTROLS) in "".join(out.split())  # the whole default list, wrapped, not cut


def test_interrupt_messages_promise_a_resume_only_where_there_is_one(tmp_path, capsys, monkeypatch):
    import typer

    from uav_cache.cli import on_interrupt, run_cli
    from uav_train.run import resume_hint

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["uav"])
    on_interrupt(lambda: "a hint left by an earlier command")  # e.g. a train run earlier in this process
    with pytest.raises(SystemExit) as e:
        run_cli(interrupted, "uav eval")
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.strip() == "uav: interrupted", err
    assert "starts over" in resume_hint(tmp_path)  # a run with no checkpoint yet
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text('{"stage": 2, "step": 25}')
    assert "stage 2 step 25" in resume_hint(tmp_path) and "resumes" in resume_hint(tmp_path)
    del typer


# ---------------------------------------------------------------------------------------------- eval --compare

def test_compare_honours_limit_names_datasets_and_hints_at_what_exists(work, capsys):
    code, _, err = run_uav(["eval", "run", *EVAL], capsys)
    assert code == 0, err
    line = refused(run_uav(["eval", "--compare", "run"], capsys), "run has no results.json", "results-limit1-")
    assert "evaluate the run first" not in line and "--limit" in line
    code, out, err = run_uav(["eval", "--compare", "run", "--limit", "1"], capsys)
    assert code == 0, err
    header = next(ln for ln in out.splitlines() if ln.startswith("| run"))
    assert "| dataset |" in header and "colours" in out
    refused(run_uav(["eval", "--compare", "run", "--limit", "7"], capsys), "results-limit7.json", "results-limit1-")
