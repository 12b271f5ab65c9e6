"""The demo driver: recipes, their mistakes, seeds, and a second run that does nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pipelines.demo import load_recipe, run_demo
from uav_cache.errors import UavError
from test_eval import data  # noqa: F401  (module fixtures reused here)

ROOT = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path, tiny_llama_dir: Path, data: Path, extra: str = "") -> Path:
    p = tmp_path / "recipe.toml"
    p.write_text(f"""
[data]
recipe = "{data}"

[[donors]]
name = "{tiny_llama_dir}"
store = "{tmp_path / 'store'}"
layers = [1]
shard_rows = 16
chunk_rows = 8
progress = false

[train]
stores = ["{tmp_path / 'store'}"]
decoder = "{tiny_llama_dir}"
adapter = "mlp"
adapter_options = {{ k = 2, hidden = 32 }}
stage1_steps = 1
steps = 2
batch_size = 4
eval_every = 2
val_items = 4
progress = false

[[runs]]
name = "mlp-lora"
out = "{tmp_path / 'runs' / 'mlp-lora'}"

[[runs]]
name = "affine-frozen"
out = "{tmp_path / 'runs' / 'affine-frozen'}"
adapter = "affine"
adapter_options = {{}}
no_lora = true

[eval]
limit = 2
controls = ["no_soft", "selfie"]
controls_other = ["no_soft"]
compare_dir = "{tmp_path / 'cmp'}"
{extra}""")
    return p


def test_demo_runs_the_recipe_and_a_second_run_is_a_no_op(tmp_path, tiny_llama_dir, data, monkeypatch):
    fresh = tmp_path / "fresh.jsonl"  # texts no run trained on
    fresh.write_text(data.read_text().replace("number", "item"))
    recipe = _recipe(tmp_path, tiny_llama_dir, data, f'data = ["{fresh}"]\ndata_runs = ["mlp-lora"]\n')
    table = run_demo(recipe, console=Console(file=io.StringIO()))
    runs = tmp_path / "runs"
    # the extra dataset is evaluated for the runs data_runs names only, in its own folder (every split, harvested)
    assert {p.name.split("-")[0] for p in (runs / "mlp-lora" / "evals").iterdir()} == {"fresh"}
    [extra] = (runs / "mlp-lora" / "evals").glob("fresh-*-all/results-*.json")
    assert not (runs / "affine-frozen" / "evals").exists()
    assert "mlp-lora" in table and "affine-frozen" in table
    assert "| affine | none | " in table  # the frozen-decoder run is shown as such, with its parameter count
    assert (tmp_path / "cmp" / "compare.md").exists() and (tmp_path / "cmp" / "compare.png").exists()
    [mine] = (runs / "mlp-lora").glob("results-limit2-*.json")  # its controls are not every control: named so
    first = json.loads(mine.read_text())
    assert first["methods"] == ["uav", "no_soft", "selfie"] and first["settings"]["methods"] == ["no_soft", "selfie", "uav"]
    [frozen] = (runs / "affine-frozen").glob("results-limit2-*.json")
    assert json.loads(frozen.read_text())["trainable_params"] == {"adapter": 32 + 1, "lora": 0}  # tiny llama: d 32
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    assert run_demo(recipe, console=Console(file=io.StringIO())) == table
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == stamps  # nothing redone

    # results as they were named before the settings and the split "all" were part of the name: found, moved to
    # their names, not evaluated again
    def unnamed(path: Path, to: Path) -> None:
        doc = json.loads(path.read_text())
        to.write_text(json.dumps({k: v for k, v in doc.items() if k != "settings"}))
        for kind, ext in (("results", "json"), ("report", "md"), ("eval_tasks", "png")):
            path.with_name(path.name.replace("results", kind).replace(".json", f".{ext}")).unlink()

    legacy = {mine: runs / "mlp-lora" / "results-limit2.json",
              extra: extra.parent.with_name(extra.parent.name.removesuffix("-all")) / "results.json"}
    items = {p: json.loads(p.read_text())["items"] for p in legacy}
    for new, old in legacy.items():
        unnamed(new, old)
    monkeypatch.setattr("pipelines.demo.evaluate", lambda cfg: pytest.fail(f"evaluated again: {cfg}"))
    said = io.StringIO()
    assert run_demo(recipe, console=Console(file=said, width=400)) == table
    for new, old in legacy.items():
        assert not old.exists() and json.loads(new.read_text())["items"] == items[new]
        assert new.with_name(new.name.replace("results", "report").replace(".json", ".md")).is_file()
        assert f"{old} is this evaluation: moved to {new}" in said.getvalue()
    monkeypatch.undo()
    older = mine  # results without limit_counts: limits counted questions, and the shuffled control was another one
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "limit_counts"}))
    said = io.StringIO()
    run_demo(recipe, console=Console(file=said, width=400))
    assert json.loads(older.read_text())["limit_counts"] == "texts"  # evaluated again
    assert f"{older} was made with other settings: evaluating again" in said.getvalue()


def test_shipped_recipes_load():
    for p in (ROOT / "pipelines" / "recipes").glob("*.toml"):
        assert load_recipe(p)["runs"], p


@pytest.mark.parametrize("extra, problem", [
    ("typo = 1", "unknown key(s) ['typo'] in [eval]"),
    ("\n[trian]\nsteps = 1", "unknown key(s) ['trian'] in the top level"),
    ("\n[[runs]]\nname = 'x'\nout = 'y'\nstepz = 3", "unknown training setting(s) ['stepz']"),
    ("\n[[runs]]\nname = 'x'", "lacks name or out"),
    ("\n[[donors]]\nname = 'd'\nstore = 's'\nmax_lenght = 3", "unknown key(s) ['max_lenght'] in [[donors]] d"),
    ("= broken", "not valid TOML"),
    ("data_runs = ['mlp_lora']", "data_runs = ['mlp_lora'] names no run of the recipe"),
    ("\n[[runs]]\nname = 'x'\nout = 'y'\nno_lora = 'false'", "no_lora = 'false' must be true or false"),
    ("\n[[runs]]\nname = 'x'\nout = 'y'\nstage = 2", "stage = 2 must be a string"),
    ("\n[[donors]]\nname = 'd'\nstore = 's'\nbatch_size = '8'", "batch_size = '8' must be an integer"),
])
def test_recipe_mistakes_are_named_before_anything_runs(tmp_path, tiny_llama_dir, data, extra, problem):
    recipe = _recipe(tmp_path, tiny_llama_dir, data, extra)
    with pytest.raises(UavError) as e:
        run_demo(recipe, console=Console(file=io.StringIO()))
    assert problem in str(e.value)
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()


def test_recipe_runs_need_their_own_folders(tmp_path, tiny_llama_dir, data):
    recipe = _recipe(tmp_path, tiny_llama_dir, data)
    text = recipe.read_text().replace(str(tmp_path / "runs" / "affine-frozen"), str(tmp_path / "runs" / "mlp-lora"))
    recipe.write_text(text)
    with pytest.raises(UavError, match="share an out folder"):
        load_recipe(recipe)


def test_each_seed_of_a_curriculum_or_transfer_starts_from_the_same_seed_of_its_first_run():
    """Seed k of a run whose init_from or frozen_decoder names another run of the recipe reads that run's seed-k
    folder (a path outside the recipe stays as it is)."""
    from pipelines.demo import seed_runs

    rec = {"train": {"stage": "2", "stores": ["s"]},
           "runs": [{"name": "labels", "out": "runs/labels"},
                    {"name": "yesno", "out": "runs/yesno", "init_from": "runs/labels"},
                    {"name": "transfer", "out": "runs/t", "frozen_decoder": "runs/labels"},
                    {"name": "outside", "out": "runs/o", "init_from": "elsewhere/run"}]}
    for k, suffix in ((0, ""), (2, "-seed2")):
        cfgs = dict(seed_runs(rec, k))
        assert cfgs["yesno"].init_from == cfgs["transfer"].frozen_decoder == "runs/labels" + suffix
        assert cfgs["yesno"].out == "runs/yesno" + suffix and cfgs["outside"].init_from == "elsewhere/run"


def test_demo_with_seeds_trains_each_run_per_seed_and_reports_the_spread(tmp_path, tiny_llama_dir, data):
    """seeds = 2 at the top of a recipe: each run trained and evaluated with the [train] seed + 0 and + 1 (seed 0 in the
    run's own folder, seed 1 beside it), then seeds.json|md with mean ± spread per run and task group. A one-seed demo
    prints its numbers beside the recipe's reference spread (none for this recipe: it says so)."""
    recipe = _recipe(tmp_path, tiny_llama_dir, data)
    text = recipe.read_text().replace('controls = ["no_soft", "selfie"]', 'controls = ["shuffled"]')
    text = text[:text.index("[[runs]]\nname = \"affine-frozen\"")] + text[text.index("[eval]"):]
    recipe.write_text("seeds = 2\n" + text)
    out = io.StringIO()
    run_demo(recipe, console=Console(file=out, width=200))
    runs = tmp_path / "runs"
    assert [json.loads((runs / d / "config.json").read_text())["train"]["seed"] for d in ("mlp-lora", "mlp-lora-seed1")] \
        == [0, 1]
    summary = json.loads((tmp_path / "cmp" / "seeds.json").read_text())
    assert summary["format"] == "uav-seed-spread" and summary["seeds"] == [0, 1]
    cell = next(iter(summary["runs"]["mlp-lora"].values()))
    assert cell["uav"]["n"] == 2 and len(cell["seed_intervals"]) == 2 and cell["reads"] in ("yes", "yes (pooled)", "no")
    assert "spread over seeds" in out.getvalue() and (tmp_path / "cmp" / "seeds.md").is_file()
    one = io.StringIO()
    run_demo(recipe, console=Console(file=one, width=200), seeds=1)  # seed 0 is already there: nothing retrained
    assert "no reference spread for this recipe" in one.getvalue()
