"""Loading examples by name: a built-in recipe (built once, cached in data/RECIPE/), a `uav data build` folder,
a user JSONL file (every record checked, every problem naming its line), a plain text file (one example per
paragraph, no questions), or a hub dataset."""

from __future__ import annotations

import json
from pathlib import Path

from uav_cache.errors import UavError
from uav_cache.examples.recipes import RECIPES, build, recipe_meta
from uav_cache.examples.schema import BUILDER_VERSION, ExampleSet, fingerprint, normalise, with_alone_rows


def _read_jsonl(path: Path) -> list[dict]:
    """Parse and validate a user JSONL file; every problem names the file and the line number."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UavError(f"cannot read {path}: {e.strerror}", "check the path and its permissions") from None
    examples: list[dict] = []
    first_line: dict[str, int] = {}
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors write one): not part of line 1
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UavError(f"{path} line {lineno}: not valid UTF-8 (byte {e.object[e.start]:#04x} at column {e.start + 1})",
                           "re-save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UavError(f"{path} line {lineno}: malformed JSON ({e.msg} at column {e.colno})",
                           "write exactly one JSON object per line") from None
        ex = normalise(obj, f"{path} line {lineno}", str(lineno), path.stem)
        if ex["id"] in first_line:
            raise UavError(f"{path} line {lineno}: duplicate id {ex['id']!r} (first seen on line {first_line[ex['id']]})",
                           "give every example a unique 'id'")
        first_line[ex["id"]] = lineno
        examples.append(ex)
    if not examples:
        raise UavError(f"no examples in {path}", "add one JSON object per line with at least a 'text' field")
    return examples


def _read_text(path: Path) -> list[dict]:
    """Plain text: one example per paragraph (blank-line separated), or per line when the file has no blank lines.
    Such examples carry no questions: they serve the self-supervised objective, a harvest, or `uav explain`."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UavError(f"cannot read {path} as UTF-8 text: {e}", "re-save the file as UTF-8") from None
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    if len(blocks) <= 1:
        blocks = [ln for ln in raw.splitlines() if ln.strip()]
    if not blocks:
        raise UavError(f"no text in {path}", "write one paragraph (or one line) per text")
    return [normalise({"id": f"{path.stem}/{i}", "text": " ".join(b.split()), "task": "text"}, f"{path} text {i}",
                      str(i), path.stem) for i, b in enumerate(blocks)]


def _limited(name: str, examples: list[dict], limit: int | None, meta: dict) -> ExampleSet:
    if limit is not None:
        if limit < 1:
            raise UavError(f"limit must be at least 1, got {limit}", "pass a positive --limit or none")
        examples = examples[:limit]
    examples = with_alone_rows(examples)
    return ExampleSet(name, examples, fingerprint(examples), meta)


def _cached(dir_: Path) -> ExampleSet | None:
    """A saved recipe build, if present, written by this builder version from the recipe's current definition
    (same recipe_hash: counts, held-out split, templates, data package versions) and intact (fingerprint)."""
    try:
        manifest = json.loads((dir_ / "manifest.json").read_text(encoding="utf-8"))
        examples = _read_jsonl(dir_ / "examples.jsonl")
    except (OSError, ValueError, UavError):
        return None
    if (manifest.get("builder_version"), manifest.get("recipe"), manifest.get("seed")) != (BUILDER_VERSION, dir_.name, 0):
        return None
    meta = recipe_meta(dir_.name)
    if manifest.get("recipe_hash") != meta["recipe_hash"] or manifest.get("fingerprint") != fingerprint(examples):
        return None
    return ExampleSet(manifest.get("name", dir_.name), examples, manifest["fingerprint"], meta)


def _from_hub(name: str) -> tuple[list[dict], dict]:
    """Map a hub dataset's splits to the schema; it needs a 'text' column."""
    import datasets  # heavy: only imported for this path

    ds = datasets.load_dataset(name)
    split_map = {"train": "train", "validation": "val", "valid": "val", "dev": "val", "val": "val", "test": "test"}
    examples = []
    for split_name in ds:
        part = ds[split_name]
        if "text" not in part.column_names:
            raise UavError(f"hub dataset {name!r} has no 'text' column (columns: {', '.join(part.column_names)})",
                           "export it to a JSONL file with a 'text' field and pass that file")
        for i, row in enumerate(part):
            ex_id = str(row["id"]) if row.get("id") is not None else f"{split_name}/{i}"
            ex = {"id": ex_id, "text": row["text"], "source": name, "qa": []}
            if split_name in split_map:
                ex["split"] = split_map[split_name]
            if isinstance(row.get("label"), (str, int)):
                ex["label"] = str(row["label"])
            examples.append(normalise(ex, f"{name} [{split_name}] row {i}", ex_id, name))
    return examples, {"hub": name}


def load_examples(source: str, *, limit: int | None = None, data_dir: Path = Path("data")) -> ExampleSet:
    """Resolve ``source`` as a recipe, a saved directory, a .jsonl file, or a hub dataset, in that order.

    Recipe builds are cached in data_dir/<recipe>/ and reused while their fingerprint still matches.
    """
    source = str(source)
    if source in RECIPES:
        cache_dir = Path(data_dir) / source
        built = _cached(cache_dir)
        if built is None:
            built = build(source)
            built.save(cache_dir)
        return _limited(built.name, built.examples, limit, {**built.meta, "path": str(cache_dir)})
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "examples.jsonl").is_file():
            raise UavError(f"{path} has no examples.jsonl", "point at a folder written by `uav data build` or at a .jsonl file")
        return _limited(path.name, _read_jsonl(path / "examples.jsonl"), limit, {"path": str(path)})
    if path.is_file():
        if path.suffix.lower() == ".txt":
            return _limited(path.stem, _read_text(path), limit, {"path": str(path)})
        if path.suffix.lower() != ".jsonl":
            raise UavError(f"{path} is neither a .jsonl nor a .txt file",
                           "convert it to JSON Lines (one {\"text\": ...} object per line) or plain text")
        return _limited(path.stem, _read_jsonl(path), limit, {"path": str(path)})
    if path.suffix.lower() in (".jsonl", ".json"):
        raise UavError(f"file not found: {path}", "check the path (relative paths start from the current directory)")
    try:
        examples, meta = _from_hub(source)
    except UavError:
        raise
    except Exception as e:  # offline, unknown name, gated, missing `datasets`...
        raise UavError(
            f"cannot load {source!r}: not a recipe ({', '.join(RECIPES)}), a folder with examples.jsonl, "
            f"a .jsonl file, or a loadable hub dataset ({type(e).__name__})",
            "pass a local JSONL file (one {\"text\": ...} object per line) or a recipe name",
        ) from None
    if not examples:
        raise UavError(f"no examples in hub dataset {source!r}", "pass a local JSONL file instead")
    return _limited(source.replace("/", "__"), examples, limit, meta)
