"""Sweeps: a grid of incentive-training trials plus baselines, in-process or on Ray, resumable.

A sweep YAML file::

    name: minilm-stsb
    base: {model: minilm, task: stsb, epochs: 1, limit: 2000}   # TrainConfig fields shared by all trials
    grid:                                                       # cartesian product over these lists
      lam: [0, 1e-3, 1e-1]
      cost: [[ffn_l1], [attn_entropy], [ffn_l1, attn_entropy]]
      seed: [1, 2]
    trials: []                  # optional extra trials (TrainConfig fields over base)
    compact: {eps: 1e-3, calib_examples: 256}          # optional: compact every trained model
    baselines:                                         # optional, built from the lam = 0 trials
      posthoc: {importance: [magnitude, activation], finetune_epochs: 0.5}
      # also: rescale (true, false or layerwise), distill, allocation: [matched, global] (global: fisher
      # spends the same MACs itself),
      # importance shapley: values from a market of each lambda = 0 model's heads and FFN blocks, estimated
      # once per model as a trial of its own; market: {block, examples, minutes, pairs, tol, value, seed}
      topk: {budgets: [32, 8, 2]}
      tokens: {budgets: [0.7, 0.5], on: [dense, units]}   # post-hoc token budgets (econlm.tokens)
    resources: {num_cpus: 1, num_gpus: 0}              # per trial, for Ray

Every trial writes ``trials/<id>/result.json`` atomically and the sweep rewrites ``results.jsonl`` after
each one; rerunning the same command skips finished trials and redoes unfinished ones (training inside
a trial resumes from its own checkpoint). A crashing trial is recorded as failed with its error and
the sweep goes on; identical trials run once.

Faults a sweep survives: a damaged JSON file it wrote (a trial's result, metrics or compaction report,
``sweep.json``) is renamed aside with a warning and its step redone; SIGTERM or Ctrl-C stops it cleanly
(the running training saves a checkpoint, nothing unfinished is recorded, a rerun resumes); and sweeps
sharing a folder never train the same trial twice, since each trial is locked while it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from econlm.analysis import AXIS_FIELDS
from econlm.errors import UserError, did_you_mean

try:
    import fcntl
except ImportError:  # Windows: no flock, so sweeps sharing a folder there are not protected from each other
    fcntl = None

# Trial settings a sweep adds to TrainConfig's: distill trains against the lambda = 0 fine-tune of the same seed;
# start_from_teacher starts from that fine-tune's weights instead of the pretrained model (CoFiPruning prunes the
# fine-tuned model; post-hoc rivals start there too), so a student and its rivals begin from the same weights.
SWEEP_SETTINGS = ("distill", "start_from_teacher")
TOP_KEYS = ("name", "base", "grid", "trials", "compact", "baselines", "resources", "compute_axis")
COMPUTE_AXES = tuple(AXIS_FIELDS)  # the frontiers analysis draws
# What makes two trials comparable: same model, task, data, seed and evaluation.
IDENTITY_KEYS = ("model", "task", "seed", "data_dir", "max_length", "limit", "eval_limit", "epochs")


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    trials: list = field(default_factory=list)
    compact: dict | None = None
    baselines: dict = field(default_factory=dict)
    resources: dict = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0})
    compute_axis: str = "dense_flops"


def _train_fields() -> set[str]:
    from econlm.training import TrainConfig

    return {f.name for f in fields(TrainConfig)} - {"out"}


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; errors name the file and line."""
    from econlm.config import key_lines, read_yaml_mapping

    data, _ = read_yaml_mapping(path)
    config = sweep_config(data, source=str(path), lines=key_lines(path))
    return config if "name" in data else replace(config, name=Path(path).stem)


def sweep_config(data: dict | SweepConfig, source: str = "sweep config", lines: dict | None = None) -> SweepConfig:
    """Validate a sweep given in code, as a mapping with a sweep file's keys (or a :class:`SweepConfig`),
    exactly as a file is validated, and build its config. Errors name ``source`` and the key (and the line,
    when ``lines`` maps keys to the lines of a file)."""
    if isinstance(data, SweepConfig):
        data = asdict(data)
    if not isinstance(data, dict):
        raise UserError(f"{source}: a sweep is a mapping of {', '.join(TOP_KEYS)}, not {type(data).__name__}")

    def where(key: str) -> str:
        return f"{source}:{lines.get(key, 1)}" if lines is not None else f"{source} [{key}]"

    for key in data:
        if key not in TOP_KEYS:
            name = str(key)
            raise UserError(
                f"{where(name)}: unknown key '{name}'; valid: {', '.join(TOP_KEYS)}.{did_you_mean(name, TOP_KEYS)}"
            )
    base = _checked_section(data, "base", where)
    grid = _checked_section(data, "grid", where)
    trials = _checked_trials(data.get("trials"), where)
    if not grid and not trials:
        raise UserError(
            f"{source}: the sweep defines no trial; add a 'grid' (lists of values to combine over 'base') "
            "or a 'trials' list"
        )
    axis = data.get("compute_axis", "dense_flops")
    if axis not in COMPUTE_AXES:
        raise UserError(f"{where('compute_axis')}: compute_axis must be one of {', '.join(COMPUTE_AXES)}")
    config = SweepConfig(
        name=str(data.get("name") or "sweep"),
        base=base,
        grid=grid,
        trials=trials,
        compact=_checked_compact(data.get("compact"), where),
        baselines=_checked_baselines(data.get("baselines"), where),
        resources=_checked_resources(data.get("resources"), where),
        compute_axis=axis,
    )
    # Building every trial's TrainConfig checks values (lambda < 0, unknown costs...) before anything runs.
    for spec in expand(config):
        try:
            _train_config(spec["settings"], "/dev/null")
        except UserError as error:
            raise UserError(f"{source}: trial {spec['id']}: {error}") from None
    if config.baselines.get("posthoc"):
        _check_rivals_learn_alike(expand(config), source)
    return config


# How a post-hoc rival learns comes from its lambda = 0 trial (the model it prunes), not from the incentive run it
# is paired with; a student that set one of these its own way would be compared with a rival that learned otherwise.
OPTIMISER_FIELDS = ("lr", "batch_size", "weight_decay", "lr_warmup_ratio")


def _check_rivals_learn_alike(specs: list[dict], source: str) -> None:
    plain = [s["settings"] for s in specs if _is_plain(s["settings"])]
    for spec in specs:
        settings = spec["settings"]
        identity = {k: settings.get(k) for k in IDENTITY_KEYS}
        reference = next((p for p in plain if all(p.get(k) == v for k, v in identity.items())), None)
        if reference is None or reference is settings:
            continue
        for key in OPTIMISER_FIELDS:
            if settings.get(key) != reference.get(key):
                raise UserError(
                    f"{source}: trial {spec['id']} sets {key} to {settings.get(key)}, its lambda = 0 trial to "
                    f"{reference.get(key)}; post-hoc rivals learn with the lambda = 0 trial's settings, so the pair "
                    f"would not learn alike: set {key} in base, or the same in both trials"
                )


def _mapping(value, key: str, where, what: str) -> dict:
    if value is None or value == [] or value == {}:  # an empty section, however written
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where(key)}: '{key}' must be a mapping of {what}, not {value!r}")
    return value


def _setting(key, value, where, at: str):
    """One training setting, checked exactly as ``econlm train --config`` checks it (YAML reads 1e-3 as a
    string: it becomes a number). An int where a float is expected, and a list of names, stay as written,
    so the trial ids of existing sweep folders do not change."""
    from econlm.config import check_value
    from econlm.training import TrainConfig

    name = str(key)
    if name in SWEEP_SETTINGS:
        if not isinstance(value, bool):
            raise UserError(f"{where(at)}: '{name}' must be true or false, not {value!r}")
        return value
    if name not in _train_fields():
        known = _train_fields() | set(SWEEP_SETTINGS)
        raise UserError(f"{where(at)}: unknown training setting '{name}'.{did_you_mean(name, known)}")
    checked = check_value(TrainConfig, name, value, where(at))
    if isinstance(checked, tuple) or (isinstance(checked, float) and isinstance(value, int)):
        return value
    return checked


def _checked_section(data: dict, section: str, where) -> dict:
    """``base`` (one value per setting) or ``grid`` (a non-empty list of values per setting)."""
    values = _mapping(data.get(section), section, where, "training settings")
    checked = {}
    for key, value in values.items():
        at = f"{section}.{key}"
        if section == "base":
            checked[key] = _setting(key, value, where, at)
            continue
        if not isinstance(value, list) or not value:
            raise UserError(f"{where(at)}: grid values of '{key}' must be a non-empty list")
        checked[key] = [_setting(key, item, where, f"{at}.{i}") for i, item in enumerate(value)]
    return checked


def _checked_trials(trials, where) -> list:
    trials = trials or []
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise UserError(f"{where('trials')}: 'trials' must be a list of mappings")
    return [{k: _setting(k, v, where, f"trials.{i}.{k}") for k, v in trial.items()} for i, trial in enumerate(trials)]


@dataclass(frozen=True)
class _CompactSettings:
    eps: float = 1e-3
    calib_examples: int = 256


def _checked_compact(compact, where) -> dict | None:
    from econlm.config import check_value

    if compact is None or compact is False:
        return None
    compact = {} if compact is True else compact
    if not isinstance(compact, dict) or set(compact) - {"eps", "calib_examples"}:
        raise UserError(f"{where('compact')}: 'compact' takes eps and calib_examples")
    checked = {k: check_value(_CompactSettings, k, v, where(f"compact.{k}")) for k, v in compact.items()}
    if checked.get("eps", 1e-3) <= 0 or checked.get("calib_examples", 1) < 1:  # the rules of CompactConfig
        raise UserError(f"{where('compact')}: compact needs eps > 0 and calib_examples >= 1, not {compact}")
    return checked


def _checked_baselines(baselines, where) -> dict:
    baselines = _mapping(baselines, "baselines", where, "baselines (posthoc, topk, tokens)")
    for key, value in baselines.items():
        if key not in BASELINES:
            raise UserError(
                f"{where(f'baselines.{key}')}: unknown baseline '{key}'; valid: {', '.join(BASELINES)}"
            )
        value = _mapping(value, f"baselines.{key}", where, "baseline settings")
        for list_key in ("budgets", "importance"):
            if list_key in value and (not isinstance(value[list_key], list) or not value[list_key]):
                raise UserError(f"{where(f'baselines.{key}.{list_key}')}: '{list_key}' must be a non-empty list")
        if key == "posthoc":
            _check_posthoc(value, lambda k: where(f"baselines.posthoc.{k}"))
        if key == "tokens":
            value = _checked_tokens(value, lambda k: where(f"baselines.tokens.{k}"))
        baselines[key] = value
    return dict(baselines)


POSTHOC_KEYS = ("importance", "finetune_epochs", "rescale", "distill", "allocation", "market")
# The market behind ``importance: shapley`` (econlm.market_run.MarketConfig fields; minutes caps the sampling).
MARKET_KEYS = {"block": 128, "examples": 256, "minutes": 30.0, "pairs": 200, "tol": 0.01, "value": "metric", "seed": 0}
ALLOCATIONS = ("matched", "global")
BASELINES = ("posthoc", "topk", "tokens")
# Where a post-hoc token budget runs: the lambda = 0 models (tokens alone) or the compacted incentive models
# (units + tokens, both levers together).
TOKEN_TARGETS = ("dense", "units")


def _checked_tokens(tokens: dict, where) -> dict:
    """``budgets``: token schedules (``0.5`` or ``"1,0.8,0.6,0.5,0.4,0.4"``), normalised to their labels;
    ``on``: dense and/or units (default both)."""
    from econlm.tokens import TokenSchedule

    for key in tokens:
        if key not in ("budgets", "on"):
            raise UserError(f"{where(key)}: unknown token-budget setting '{key}'; valid: budgets, on")
    if "budgets" not in tokens:
        raise UserError(f"{where('budgets')}: a token-budget baseline needs budgets, such as [0.7, 0.5]")
    labels = []
    for budget in tokens["budgets"]:
        try:
            labels.append(TokenSchedule.parse(budget).label)
        except UserError as error:
            raise UserError(f"{where('budgets')}: {error}") from None
    on = _as_list(tokens.get("on", list(TOKEN_TARGETS)))
    for target in on:
        if target not in TOKEN_TARGETS:
            raise UserError(f"{where('on')}: unknown target '{target}'; valid: {', '.join(TOKEN_TARGETS)}")
    return {"budgets": labels, "on": on}


def _check_posthoc(posthoc: dict, where) -> None:
    from econlm.prune import GIVEN_IMPORTANCE, IMPORTANCE

    for key in posthoc:
        if key not in POSTHOC_KEYS:
            raise UserError(f"{where(key)}: unknown post-hoc setting '{key}'; valid: {', '.join(POSTHOC_KEYS)}")
    for name in posthoc.get("importance", []):
        if name not in IMPORTANCE and name not in GIVEN_IMPORTANCE:
            raise IMPORTANCE.unknown(str(name), f" (or {', '.join(GIVEN_IMPORTANCE)}: a market's values)")
    if "market" in posthoc:
        if "shapley" not in posthoc.get("importance", []):
            raise UserError(f"{where('market')}: market settings serve 'shapley' importance; add shapley to 'importance'")
        _check_market(posthoc["market"], where)
    for epochs in _as_list(posthoc.get("finetune_epochs", 0.5)):
        if epochs != "matched" and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs < 0):
            raise UserError(f"{where('finetune_epochs')}: epochs must be numbers >= 0 or 'matched', not {epochs!r}")
    if not all(isinstance(v, bool) for v in _as_list(posthoc.get("distill", False))):
        raise UserError(f"{where('distill')}: 'distill' must be true or false (or a list of both)")
    if not all(isinstance(v, bool) or v == "layerwise" for v in _as_list(posthoc.get("rescale", False))):
        raise UserError(
            f"{where('rescale')}: 'rescale' must be true (each layer on the dense model's inputs), false or "
            "layerwise (in order, on the pruned model's own inputs), or a list of them"
        )
    allocations = _as_list(posthoc.get("allocation", "matched"))
    for value in allocations:
        if value not in ALLOCATIONS:
            raise UserError(f"{where('allocation')}: '{value}' is not an allocation; valid: {', '.join(ALLOCATIONS)}")
    if "global" in allocations:
        from econlm.prune import GLOBAL_IMPORTANCE

        if not set(posthoc.get("importance", [])) & set(GLOBAL_IMPORTANCE):
            raise UserError(
                f"{where('allocation')}: 'global' ranks units across layers by importance per MAC, which needs "
                f"importance on one scale in every layer: add {' or '.join(GLOBAL_IMPORTANCE)} to 'importance'"
            )


def _check_market(market, where) -> None:
    """The market settings of ``importance: shapley``, over MARKET_KEYS' defaults, checked like econlm market's."""
    market = _mapping(market, "baselines.posthoc.market", where, "market settings")
    for key in market:
        if key not in MARKET_KEYS:
            raise UserError(f"{where('market')}: unknown market setting '{key}'; valid: {', '.join(MARKET_KEYS)}")
    settings = {**MARKET_KEYS, **market}
    try:
        _market_config(settings, model="unused", task="unused", out="unused")
    except (TypeError, ValueError) as error:
        raise UserError(f"{where('market')}: {error}") from None
    except UserError as error:
        raise UserError(f"{where('market')}: {str(error).replace('--', '')}") from None


def _market_config(market: dict, **fields):
    """econlm market's config for a sweep's market: both unit kinds (the rivals remove heads and neurons), no
    interactions and no held-out comparison (the sweep trains and scores its rivals itself)."""
    from econlm.market_run import MarketConfig

    return MarketConfig(
        units=("head", "ffn"),
        block=int(market["block"]),
        examples=int(market["examples"]),
        max_minutes=float(market["minutes"]),
        pairs=int(market["pairs"]),
        tol=float(market["tol"]),
        value=str(market["value"]),
        seed=int(market["seed"]),
        interaction_top=0,
        budgets=(),
        compare=False,
        **fields,
    )


def _checked_resources(resources, where) -> dict:
    resources = _mapping(resources, "resources", where, "Ray resources (num_cpus, num_gpus)")
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"{where(f'resources.{key}')}: resource '{key}' must be a number >= 0, not {value!r}")
    return {"num_cpus": 1, "num_gpus": 0, **resources}


# ---------------------------------------------------------------------------------------------------------
# Trials


def _normalise(settings: dict) -> dict:
    out = {}
    for key, value in settings.items():
        if key == "cost":
            value = [value] if isinstance(value, str) else list(value)
        out[key] = value
    return out


def trial_id(kind: str, settings: dict) -> str:
    """A stable id: readable prefix plus a hash of the exact settings (same settings, same id)."""
    text = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    parts = [kind, str(settings.get("task", "")), "+".join(settings.get("cost", []) or [])]
    if "lam" in settings:
        parts.append(f"lam{settings['lam']:g}" if isinstance(settings["lam"], (int, float)) else str(settings["lam"]))
    if "budget" in settings and settings["budget"] is not None:
        parts.append(f"b{settings['budget']}")
    if "seed" in settings:
        parts.append(f"s{settings['seed']}")
    readable = "-".join(p for p in parts if p).replace("/", "_")
    return f"{readable}-{digest}"


def expand(config: SweepConfig) -> list[dict]:
    """The incentive-training trials of a sweep, duplicates removed (first occurrence kept)."""
    keys = list(config.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(config.grid[k] for k in keys))]
    if not combos and not config.trials:
        combos = [{}]
    elif not config.grid:
        combos = []
    specs, seen = [], set()
    # Explicit trials first: a sweep file lists them in the order that matters most when time is short.
    for extra in list(config.trials) + combos:
        settings = _normalise({**config.base, **extra})
        settings.setdefault("seed", 42)
        tid = trial_id("train", settings)
        if tid in seen:
            continue
        seen.add(tid)
        specs.append({"id": tid, "kind": "train", "settings": settings})
    return specs


def _train_config(settings: dict, out: str):
    from econlm.training import TrainConfig

    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k not in SWEEP_SETTINGS}
    return TrainConfig(**values, out=out)


DISTILL_FIELDS = ("teacher", "distill_weight", "distill_hidden_weight", "distill_temperature")


def _untaxed_settings(settings: dict) -> dict:
    """The settings of a trial other than its tax and distillation."""
    from econlm.incentive import TaxConfig

    # gate_init is how the gates start: a setting of the tax's gates that TrainConfig applies, not of the run
    dropped = {f.name for f in fields(TaxConfig)} | set(DISTILL_FIELDS) | set(SWEEP_SETTINGS) | {"gate_init"}
    return {k: v for k, v in settings.items() if k not in dropped}


def _untaxed(settings: dict) -> str:
    """A key of :func:`_untaxed_settings`, numbers as floats: two trials with the same key differ only in
    what they pay for compute."""
    kept = {
        k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in _untaxed_settings(settings).items()
    }
    return json.dumps(kept, sort_keys=True, default=str)


def _is_plain(settings: dict) -> bool:
    """A plain fine-tune: no price and no gates (flops and latency train gates even at lambda = 0)."""
    return (
        float(settings.get("lam", 0)) == 0.0
        and settings.get("budget") is None
        and not {"flops", "latency"} & set(settings.get("cost", ()))
        and not settings.get("distill")
        and not settings.get("teacher")
        and not settings.get("start_from_teacher")
    )


def teacher_settings(settings: dict, plain: list[dict] = ()) -> tuple[str, dict]:
    """The id and settings of a ``distill: true`` trial's teacher: the sweep's plain fine-tune with the same
    model, task, data, seed, epochs and optimisation when there is one, else that fine-tune made up."""
    key = _untaxed(settings)
    for spec in plain:
        if _untaxed(spec["settings"]) == key and _is_plain(spec["settings"]):
            return spec["id"], spec["settings"]
    teacher = _normalise({**_untaxed_settings(settings), "lam": 0.0, "cost": ["ffn_l1"]})
    return trial_id("train", teacher), teacher


def _with_teacher(settings: dict, trials: Path, plain: list[dict]) -> dict:
    """A ``distill: true`` trial's settings with its teacher's model folder, and a ``start_from_teacher: true``
    trial's with that folder as its model; the teacher is trained first if it is missing."""
    if not settings.get("distill") and not settings.get("start_from_teacher"):
        return settings
    teacher_id, teacher = teacher_settings(settings, plain)
    teacher_dir = trials / teacher_id / "model"
    _trained(teacher, teacher_dir)
    given = {"teacher": str(teacher_dir)} if settings.get("distill") else {}
    if settings.get("start_from_teacher"):
        given["model"] = str(teacher_dir)
    return {**settings, **given}


def _final_measurements(model_dir: Path, settings: dict, eps: float, result: dict) -> None:
    """Effective compute (FFN threshold eps, full budget), dense FLOPs and latency of the final model."""

    from econlm.flops import Structure, dense_macs
    from econlm.latency import measure, model_call, random_inputs
    from econlm.models import load_model

    loaded = load_model(str(model_dir))
    max_length = settings.get("max_length", 128)
    row = _probe_row(settings, loaded, model=str(model_dir), budgets=("full",), ffn_eps=eps)
    structure = Structure.of_model(loaded.model)
    result["dense_flops"] = dense_macs(structure, max_length, include_head=True)["flops"]
    if row.get("token_macs_ratio") is not None:  # learned token thresholds: the blocks run on fewer tokens
        result.update(_token_flops(loaded.model, max_length, row["token_macs_ratio"]))
        result["token_macs_ratio"] = row["token_macs_ratio"]
    result["effective_flops_per_token"] = 2 * row["effective_macs_per_token"]
    result["effective_score"] = row["score"]
    forward = model_call(loaded.model, random_inputs(32, max_length))
    result["latency_ms"] = 1000 * measure(forward, warmup=2, repeats=5).median
    result.update(_dev_latency(settings, loaded))
    result["structure"] = {"heads": list(structure.heads), "ffn": list(structure.ffn)}


DEV_LATENCY_EXAMPLES = 256  # real dev examples per timed pass, in batches of 32: the latency_dev axis


def _dev_latency(settings: dict, loaded, token_budget=None) -> dict:
    """``latency_dev_ms``: median milliseconds per batch of 32 real dev examples (evenly spaced over the split,
    so its mix of lengths), each batch padded to its own longest row as scoring runs it, with the trial's token rule
    (or ``token_budget``) in force. Random full-length rows (``latency_ms``) flatter a rule that drops
    tokens: real text is shorter. Language-modelling tasks have no such batches (their windows are full)."""
    from contextlib import nullcontext

    from econlm import data
    from econlm.latency import batches_call, example_batches, measure, spread
    from econlm.tokens import token_budget as budget
    from econlm.userdata import spec_of

    task = data.get_task(settings["task"], spec_of(settings))
    if task.is_lm:
        return {}
    examples = data.load_examples(task, "dev", settings.get("data_dir"), settings.get("eval_limit"))
    subset = spread(examples, DEV_LATENCY_EXAMPLES)
    if not subset:
        return {}
    batches = example_batches(loaded.tokenizer, subset, batch_size=32, max_length=settings.get("max_length", 128))
    rule = nullcontext() if token_budget is None else budget(loaded.model, token_budget, tokenizer=loaded.tokenizer)
    with rule:
        seconds = measure(batches_call(loaded.model, batches), warmup=1, repeats=5).median
    return {"latency_dev_ms": 1000 * seconds / len(batches), "latency_dev_examples": len(subset)}


def _is_lm(settings: dict) -> bool:
    from econlm.data import get_task
    from econlm.userdata import spec_of

    return get_task(settings["task"], spec_of(settings)).is_lm


def _data_fields(settings: dict) -> dict:
    """A trial's own-data settings (text columns, label column, split files...), for the probe configs."""
    from econlm.userdata import DATA_FIELDS

    return {k: settings[k] for k in DATA_FIELDS if settings.get(k)}


def run_trial(spec: dict, trial_dir: str, context: dict) -> dict:
    """Run one trial and return its result. Failures are results too; only a stop (train's Interrupted,
    KeyboardInterrupt) propagates."""
    from econlm.training import Interrupted

    started = time.time()
    result: dict[str, Any] = {"id": spec["id"], "kind": spec["kind"], "settings": spec["settings"]}
    try:
        if spec["kind"] == "train":
            _run_train_trial(spec, Path(trial_dir), context, result)
        elif spec["kind"] == "posthoc":
            _run_posthoc_trial(spec, Path(trial_dir), context, result)
        elif spec["kind"] == "topk":
            _run_topk_trial(spec, Path(trial_dir), result)
        elif spec["kind"] == "tokens":
            _run_tokens_trial(spec, Path(trial_dir), result)
        elif spec["kind"] == "market":
            _run_market_trial(spec, Path(trial_dir), result)
        else:
            raise ValueError(f"unknown trial kind {spec['kind']}")
        result["status"] = "ok"
    except Interrupted:
        raise  # a stop (Ctrl-C, SIGTERM), not a failure: the trial stays unrecorded, and a rerun resumes it
    except Exception as error:  # noqa: BLE001 - a crashing trial is recorded, the sweep goes on
        result["status"] = "failed"
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=8)
    result["seconds"] = time.time() - started
    return result


def _summary_fields(metrics: dict, result: dict) -> None:
    result.update(
        {
            "metric": metrics["metric"],
            "score": metrics["score"],
            "metrics": metrics["metrics"],
            "lambda_final": metrics["lambda_final"],
            "sparsity": metrics["ffn_sparsity"]["overall"],
            "sparsity_per_layer": metrics["ffn_sparsity"]["per_layer"],
            "gini": metrics["attention"]["gini"],
            "entropy": metrics["attention"]["entropy"],
            "entropy_per_layer": [sum(e["entropy"]) / len(e["entropy"]) for e in metrics["attention"]["per_layer"]],
            "gini_per_layer": [sum(e["gini"]) / len(e["gini"]) for e in metrics["attention"]["per_layer"]],
            "gates": metrics.get("gates"),
            "train_seconds": metrics["train"]["seconds"],
        }
    )


def _run_train_trial(spec: dict, trial_dir: Path, context: dict, result: dict) -> None:
    from econlm.compact import CompactConfig, NothingToRemove, run_compact

    model_dir = trial_dir / "model"
    metrics = _trained(spec["settings"], model_dir, context.get("plain", ()))
    _summary_fields(metrics, result)
    result["model_dir"] = str(model_dir)
    teacher = (metrics.get("distillation") or {}).get("teacher")
    made_from = [Path(teacher)] if teacher else []
    if spec["settings"].get("start_from_teacher"):  # its weights came from the fine-tune: count those steps once
        start = trial_dir.parent / teacher_settings(spec["settings"], context.get("plain", ()))[0] / "model"
        made_from += [start] if start not in made_from else []
    result["training"] = _training_cost(metrics, made_from)
    result["dense_flops_before"] = metrics["dense_flops"]
    final_dir = model_dir
    compact = context.get("compact")
    eps = (compact or {}).get("eps", 1e-3)
    if compact is not None:  # learned token thresholds too: their values count open heads only, so they survive
        compact_dir = trial_dir / "compact"
        report = _compact_report(compact_dir)
        if report is None:
            try:
                run_compact(
                    CompactConfig(
                        checkpoint=str(model_dir),
                        out=str(compact_dir),
                        eps=eps,
                        calib_examples=compact.get("calib_examples", 256),
                        latency_repeats=3,
                        eval_limit=spec["settings"].get("eval_limit"),
                        max_length=spec["settings"].get("max_length", 128),
                        data_dir=spec["settings"].get("data_dir"),
                        levers=False,  # a token rule's model is measured as it runs; its levers alone cost more
                    ),
                    progress=False,
                )
            except NothingToRemove as nothing:
                result["compact"] = {"removed": None, "note": str(nothing)}
            report = _compact_report(compact_dir)
        if report is not None:
            result["compact"] = {
                "removed": report["removed"],
                "ratios": report["ratios"],
                "score_after": report["after"]["score"],
            }
            final_dir = compact_dir
            if report["after"]["score"]:
                result["score"] = report["after"]["score"]["value"]
    result["final_model"] = str(final_dir)
    _final_measurements(final_dir, spec["settings"], eps, result)


def _trained(settings: dict, model_dir: Path, plain: list[dict] = ()) -> dict:
    """The metrics of the training in ``model_dir``: read back when it finished, else trained, resuming from
    the checkpoint an interrupted run (Ctrl-C, SIGTERM, a killed process) left."""
    from econlm.training import train

    metrics = _read_json(model_dir / "metrics.json", required=("score", "ffn_sparsity", "attention"))
    if metrics is not None:
        return metrics
    config = _train_config(_with_teacher(settings, model_dir.parent.parent, plain), str(model_dir))
    return train(config, resume=(model_dir / "checkpoint" / "state.pt").exists(), progress=False)


def _training_cost(metrics: dict, before: list[Path]) -> dict:
    """Every optimizer step and training second behind a model: its own, plus those of the models it was
    made from (the lambda = 0 model a post-hoc rival was pruned from, a teacher). "Better" must not mean
    "trained longer", so each method's score is reported with this."""
    steps, seconds, parts = metrics["train"]["steps"], metrics["train"]["seconds"], ["own"]
    for folder in before:
        earlier = _read_json(folder / "metrics.json", required=("train",), set_aside=False)
        if earlier is not None:
            steps += earlier["train"]["steps"]
            seconds += earlier["train"]["seconds"]
            parts.append(str(folder))
    return {"steps": steps, "seconds": seconds, "counted": parts}


def _compact_report(compact_dir: Path) -> dict | None:
    """compact.json of a finished compaction, or None after clearing what an unfinished or damaged one left
    (run_compact refuses a folder that is not empty, which would silently skip compaction for good)."""
    report = _read_json(compact_dir / "compact.json", required=("removed", "ratios", "after"), set_aside=False)
    if report is not None:
        return report
    if (compact_dir / "compact.json").exists():
        _set_aside(compact_dir, "compact.json is not a readable compaction report")
    elif compact_dir.exists():
        shutil.rmtree(compact_dir)  # a compaction cut short: its partial model is rebuilt from the trained one
    return None


def _prune_rival(model, settings: dict, batches: list[dict], scores) -> None:
    from econlm.prune import prune

    prune(
        model,
        settings.get("remove_heads"),  # None for a global allocation: prune spends target_block_macs
        settings.get("remove_neurons"),
        settings["importance"],
        batches,
        rescale=settings.get("rescale", False),  # true, or "layerwise"
        target_block_macs=settings.get("target_block_macs"),
        seq_len=settings.get("max_length", 128),
        scores=scores,
    )


# The examples a rival's importance (and repair) is measured on. "seeded": as many as a Fisher-started student
# measures its gates' start on, drawn by the same seed from the same training split, so both sides of a pair see
# the same examples. Trials from before the key existed keep what they ran with: the first 128 training rows,
# which for a training file sorted by source (CoLA) or genre (STS-B) was not a sample.
RIVAL_CALIBRATION = "seeded"


def _rival_calibration(settings: dict) -> dict:
    if settings.get("calibration") == RIVAL_CALIBRATION:
        from econlm.training import FISHER_START_EXAMPLES

        return {
            "calib_examples": FISHER_START_EXAMPLES,
            "calib_seed": settings["seed"],
            "calib_from": settings.get("limit"),  # the examples the student trained on, as it sampled them
        }
    return {"calib_examples": 128, "calib_seed": None}


def _run_posthoc_trial(spec: dict, trial_dir: Path, context: dict, result: dict) -> None:
    """Prune the lam = 0 model like a compacted incentive model (same counts per layer), then fine-tune."""
    from econlm.compact import CompactConfig, _calibration_batches, save_model
    from econlm.data import get_task
    from econlm.fisher import RepairStopped
    from econlm.models import load_model
    from econlm.runinfo import write_json
    from econlm.userdata import spec_of

    settings = spec["settings"]
    pruned_dir = trial_dir / "pruned"
    if not (pruned_dir / "config.json").exists():
        loaded = load_model(settings["source_model"])
        labelled = settings["importance"] == "fisher"  # the gradient of the task loss needs labels
        batches = _calibration_batches(
            loaded,
            get_task(settings["task"], spec_of(settings)),
            CompactConfig(
                checkpoint=settings["source_model"],
                out="unused",
                data_dir=settings.get("data_dir"),
                max_length=settings.get("max_length", 128),
                **_rival_calibration(settings),
            ),
            labels=labelled,
        )
        scores = _market_scores(settings, trial_dir, loaded.model) if settings.get("market") else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RepairStopped)
            _prune_rival(loaded.model, settings, batches, scores)
        # Where the layer-by-layer repair stopped (None: it ran to the end, or none was asked for).
        stopped = [str(w.message) for w in caught if issubclass(w.category, RepairStopped)]
        for w in caught:  # any other warning is shown as it would have been
            if not issubclass(w.category, RepairStopped):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        write_json(trial_dir / "repair.json", {"stopped": stopped[0] if stopped else None})
        save_model(loaded.model, loaded.tokenizer, pruned_dir)  # its per-layer structure: result["structure"]
    if (trial_dir / "repair.json").exists():
        result["repair_stopped"] = json.loads((trial_dir / "repair.json").read_text())["stopped"]
    train_settings = {k: v for k, v in settings.items() if k in _train_fields()}
    train_settings.update(
        {
            "model": str(pruned_dir),
            "lam": 0.0,
            "cost": ["ffn_l1"],
            "target": "ffn",
            "epochs": settings["finetune_epochs"],  # 0: scored as pruned, with no recovery training
            "budget": None,
            "schedule": "constant",
        }
    )
    if settings.get("distill"):  # the same teacher as distilled incentive runs: the lambda = 0 model itself
        train_settings["teacher"] = settings["source_model"]
    model_dir = trial_dir / "model"
    metrics = _trained(train_settings, model_dir)
    _summary_fields(metrics, result)
    result["training"] = _training_cost(metrics, [Path(settings["source_model"])])
    result["final_model"] = str(model_dir)
    _final_measurements(
        model_dir, settings, (context.get("compact") or {}).get("eps", 1e-3), result
    )


def _market_scores(settings: dict, trial_dir: Path, model) -> list:
    """The Shapley values the sweep's market trial estimated for this rival's source model, per layer."""
    from econlm.flops import Structure
    from econlm.market import scores_of_market

    path = trial_dir.parent / settings["market"] / "market" / "market.json"
    market = _read_json(path, required=("units",), set_aside=False)
    if market is None:
        raise RuntimeError(f"the market trial {settings['market']} has no market.json; rerun the sweep to estimate it")
    return scores_of_market(market, Structure.of_model(model))


def _run_market_trial(spec: dict, trial_dir: Path, result: dict) -> None:
    """Shapley values of a lambda = 0 model's heads and FFN blocks (econlm market), for ``shapley`` rivals.
    The estimate saves its samples as it goes, so a stopped market resumes."""
    from econlm.market_run import run_market, save_market

    settings = spec["settings"]
    config = _market_config(
        settings["market"],
        model=settings["source_model"],
        task=settings["task"],
        out=str(trial_dir / "market"),
        max_length=settings.get("max_length", 128),
        data_dir=settings.get("data_dir"),
        **_data_fields(settings),
    )
    market = run_market(config, progress=False)
    save_market(market, trial_dir / "market")
    estimator = market["estimator"]
    result["market"] = {
        "path": str(trial_dir / "market" / "market.json"),
        "units": len(market["units"]),
        "pairs": estimator["pairs"],
        "evaluations": estimator["evaluations"],
        "minutes": estimator["seconds"] / 60,
        "converged": estimator["converged"],
        "stopped_by": estimator["stopped_by"],
        "value_definition": market["value_definition"],
        "full_value": market["full_value"],
    }


def _probe_row(settings: dict, loaded, save_to: Path | None = None, **overrides) -> dict:
    """The probe of ``loaded`` (the model of ``settings['source_model']`` or a trial's own) on the trial's task
    and data, one row: the dev split (a language model's test split), saved under ``save_to`` when given."""
    from econlm.probing import ProbeConfig, run_probe, save_probe

    probe = run_probe(
        ProbeConfig(
            task=settings["task"],
            limit=settings.get("eval_limit"),
            max_length=settings.get("max_length", 128),
            data_dir=settings.get("data_dir"),
            split="test" if _is_lm(settings) else "dev",
            **_data_fields(settings),
            **overrides,
        ),
        model=loaded,
        progress=False,
    )
    if save_to is not None:
        save_probe(probe, save_to)
    return probe.rows[0]


def _probe_fields(row: dict) -> dict:
    """What a baseline's result takes from its probe row."""
    return {
        "metric": row["metric"],
        "score": row["score"],
        "gini": row["gini"],
        "entropy": row["entropy"],
        "effective_flops_per_token": 2 * row["effective_macs_per_token"],
    }


def _run_topk_trial(spec: dict, trial_dir: Path, result: dict) -> None:
    from econlm.flops import Structure, dense_macs
    from econlm.models import load_model

    settings = spec["settings"]
    loaded = load_model(settings["source_model"])
    row = _probe_row(
        settings, loaded, trial_dir / "probe", model=settings["source_model"], budgets=(str(settings["budget_k"]),)
    )
    # The same count as for trained models: the model's real structure, task head included.
    structure = Structure.of_model(loaded.model)
    result.update(_probe_fields(row))
    result["dense_flops"] = dense_macs(structure, settings.get("max_length", 128), include_head=True)["flops"]


def _run_tokens_trial(spec: dict, trial_dir: Path, result: dict) -> None:
    """A post-hoc token budget on a trained model (econlm.tokens): its score, and its compute with the
    blocks' MACs scaled by the share the budget left on the real dev tokens (padding never counted)."""
    from econlm.latency import measure, model_call, random_inputs
    from econlm.models import load_model
    from econlm.tokens import token_budget

    settings = spec["settings"]
    max_length = settings.get("max_length", 128)
    loaded = load_model(settings["source_model"])
    row = _probe_row(
        settings,
        loaded,
        trial_dir / "probe",
        model=settings["source_model"],
        budgets=("full",),
        token_budget=settings["token_budget"],
    )
    result.update(
        {
            **_probe_fields(row),
            "token_budget": settings["token_budget"],
            "token_schedule": row["token_budget"],  # one fraction per layer
            "token_macs_ratio": row["token_macs_ratio"],
        }
    )
    result.update(_token_flops(loaded.model, max_length, row["token_macs_ratio"]))
    # The fixed 128-token synthetic case (every token real), as the other trials' latency_ms.
    forward = model_call(loaded.model, random_inputs(32, max_length))
    with token_budget(loaded.model, settings["token_budget"], tokenizer=loaded.tokenizer):
        result["latency_ms"] = 1000 * measure(forward, warmup=2, repeats=5).median
    result.update(_dev_latency(settings, loaded, token_budget=settings["token_budget"]))


def _token_flops(model, max_length: int, ratio: float) -> dict:
    """``dense_flops`` of a model that drops tokens: the head and the blocks of one ``max_length`` sequence,
    the blocks scaled by ``ratio``, the share of block MACs the token rule left on the real dev tokens
    (:func:`econlm.flops.shortened_macs`). The unscaled count is kept as ``dense_flops_all_tokens``."""
    from econlm.flops import Structure, dense_macs

    structure = Structure.of_model(model)
    full = dense_macs(structure, max_length, include_head=True)
    blocks = 2 * sum(full["by_layer"])
    return {
        "dense_flops": full["flops"] - blocks * (1.0 - ratio),
        "dense_flops_all_tokens": full["flops"],
        "structure": {"heads": list(structure.heads), "ffn": list(structure.ffn)},
    }


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _posthoc_variants(posthoc: dict, incentive_settings: dict) -> list[tuple[str, bool | str, float, str]]:
    """(importance, rescale, fine-tuning epochs, allocation) for each post-hoc rival of one incentive run.
    ``matched`` epochs are the incentive run's own, so both get the same training steps after the lambda = 0
    model. A ``global`` allocation (the pruner spends the incentive model's FLOPs itself) is made only for
    importance on one scale across layers (fisher)."""
    from econlm.prune import GLOBAL_IMPORTANCE

    epochs = []
    for value in _as_list(posthoc.get("finetune_epochs", 0.5)):
        epochs.append(float(incentive_settings.get("epochs", 3.0)) if value == "matched" else value)
    return [
        (importance, rescale, e, allocation)
        for importance in _as_list(posthoc.get("importance", ["magnitude"]))
        for rescale in _as_list(posthoc.get("rescale", False))
        for e in epochs
        for allocation in _as_list(posthoc.get("allocation", "matched"))
        if allocation == "matched" or importance in GLOBAL_IMPORTANCE
    ]


def _kept_block_macs(model_config, per_layer: list[dict], seq_len: int) -> float:
    """The blocks' MACs of one ``seq_len``-token sequence of a model compacted to ``per_layer``'s kept units."""
    from econlm.flops import Structure, dense_macs

    dense = Structure.dense(model_config)
    group = dense.heads[0] // dense.kv_heads[0]
    kept = replace(
        dense,
        heads=tuple(layer["heads_kept"] for layer in per_layer),
        kv_heads=tuple(layer["heads_kept"] // group for layer in per_layer),
        ffn=tuple(layer["neurons_kept"] for layer in per_layer),
    )
    return dense_macs(kept, seq_len)["macs"]


def _wants_market(config: SweepConfig) -> bool:
    posthoc = config.baselines.get("posthoc") or {}
    return "shapley" in posthoc.get("importance", [])


def _market_settings(config: SweepConfig, settings: dict, source: str) -> dict:
    """What a market trial depends on: the model it values, its task and data, and the market's settings."""
    from econlm.userdata import DATA_FIELDS

    keep = ("task", "max_length", "data_dir", *DATA_FIELDS)
    market = {**MARKET_KEYS, **(config.baselines["posthoc"].get("market") or {})}
    return {**{k: settings[k] for k in keep if settings.get(k) is not None}, "source_model": source, "market": market}


def market_specs(config: SweepConfig, results: dict[str, dict]) -> list[dict]:
    """One market per lambda = 0 model that ``shapley`` rivals will prune (it has compacted peers)."""
    if not _wants_market(config):
        return []
    specs = []
    trained = [r for r in results.values() if r["kind"] == "train" and r.get("status") == "ok"]
    for reference in trained:
        settings = reference["settings"]
        if not _is_plain(settings) or not _compacted_peers(trained, {k: settings.get(k) for k in IDENTITY_KEYS}):
            continue
        s = _market_settings(config, settings, reference["model_dir"])
        specs.append({"id": trial_id("market", s), "kind": "market", "settings": s})
    return specs


def baseline_specs(config: SweepConfig, results: dict[str, dict]) -> list[dict]:
    """Baseline trials derived from finished training trials (needs the lam = 0 ones)."""
    specs = []
    trained = [r for r in results.values() if r["kind"] == "train" and r.get("status") == "ok"]
    for reference in trained:
        settings = reference["settings"]
        if not _is_plain(settings):
            continue
        same = {
            k: v
            for k, v in settings.items()
            if k not in ("lam", "cost", "target", "budget", "schedule", "price_lr", "attention_weight", "ffn_weight")
        }
        identity = {k: settings.get(k) for k in IDENTITY_KEYS}
        source = reference["model_dir"]  # the trained lam = 0 model itself, not a compacted copy
        topk = config.baselines.get("topk")
        if topk:
            for k in topk.get("budgets", [32, 8, 2]):
                s = {**same, "source_model": source, "budget_k": k}
                specs.append({"id": trial_id("topk", s), "kind": "topk", "settings": s})
        tokens = config.baselines.get("tokens")
        if tokens:
            specs.extend(_token_specs(tokens, same, source, identity, trained))
        posthoc = config.baselines.get("posthoc")
        if posthoc:
            for incentive in _compacted_peers(trained, identity):
                removed, other = incentive["compact"]["removed"], incentive["settings"]
                from econlm.models import load_config

                model_config, _ = load_config(source)
                from econlm import arch

                shape = arch.shape(model_config)
                heads = [shape.heads - layer["heads_kept"] for layer in removed["per_layer"]]
                neurons = [shape.intermediate - layer["neurons_kept"] for layer in removed["per_layer"]]
                # What a global allocation may spend: the incentive model's blocks' MACs
                target = _kept_block_macs(model_config, removed["per_layer"], settings.get("max_length", 128))
                for importance, rescale, epochs, allocation in _posthoc_variants(posthoc, other):
                    s = {
                        **same,
                        "source_model": source,
                        "matches": incentive["id"],
                        "remove_heads": heads,
                        "remove_neurons": neurons,
                        "importance": importance,
                        "finetune_epochs": epochs,
                        "calibration": RIVAL_CALIBRATION,
                    }
                    if allocation == "global":  # the pruner spends the same blocks' MACs where it sees fit
                        del s["remove_heads"], s["remove_neurons"]
                        s["allocation"] = "global"
                        s["target_block_macs"] = target
                    if importance == "shapley":  # the values of this source model's market trial
                        s["market"] = trial_id("market", _market_settings(config, settings, source))
                    if rescale:
                        s["rescale"] = rescale  # only when set: the ids of earlier sweeps stay as they were
                    if posthoc.get("distill") and epochs:
                        s["distill"] = True
                        # The student's own distillation terms (hidden states, weights, temperature), so the same
                        # teacher means the same loss; only when set, so the ids of earlier sweeps stay as they were.
                        if other.get("distill"):
                            s.update({k: other[k] for k in DISTILL_FIELDS if k != "teacher" and k in other})
                    specs.append({"id": trial_id("posthoc", s), "kind": "posthoc", "settings": s})
    unique = {}
    for spec in specs:
        unique.setdefault(spec["id"], spec)
    return list(unique.values())


def _compacted_peers(trained: list[dict], identity: dict) -> list[dict]:
    """The trained models compaction shrank whose model, task, data, seed and evaluation match ``identity``."""
    return [
        r
        for r in trained
        if (r.get("compact") or {}).get("removed")
        and all(r["settings"].get(k) == v for k, v in identity.items())
    ]


def _token_specs(tokens: dict, same: dict, source: str, identity: dict, trained: list[dict]) -> list[dict]:
    """Token-budget trials: each budget on the lambda = 0 model (``dense``) and on every compacted incentive
    model of the same identity (``units``)."""
    specs = []
    for budget in tokens["budgets"]:
        if "dense" in tokens["on"]:
            s = {**same, "source_model": source, "token_budget": budget, "on": "dense"}
            specs.append({"id": trial_id("tokens", s), "kind": "tokens", "settings": s})
        if "units" not in tokens["on"]:
            continue
        for incentive in _compacted_peers(trained, identity):
            settings = incentive["settings"]
            if "tokens" in settings.get("cost", ()) or settings.get("token_budget") is not None:
                continue  # it drops tokens by its own rule already
            s = {**same, "source_model": incentive["final_model"], "token_budget": budget, "on": "units"}
            s["matches"] = incentive["id"]
            specs.append({"id": trial_id("tokens", s), "kind": "tokens", "settings": s})
    return specs


# ---------------------------------------------------------------------------------------------------------
# Running


class SweepStopped(Exception):
    """A signal (Ctrl-C, SIGTERM) stopped the sweep. The trial it stopped is not recorded, so rerunning the
    same command redoes it, its training resuming from the checkpoint it saved."""

    def __init__(self, signum: int, trial: str | None):
        self.signum = int(signum)
        self.trial = trial
        during = f" during trial {trial}" if trial else ""
        super().__init__(f"sweep stopped by {signal.Signals(self.signum).name}{during}")


@contextlib.contextmanager
def _stop_on_signals(received: dict):
    """SIGTERM (sent by timeout, docker, SLURM, Ray) stops a sweep the way Ctrl-C does, instead of killing it
    mid-write. Inside train() its own handlers take over, so that a stop first finishes the step and saves."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python lets only the main thread set handlers; there the default behaviour stays
        return

    def stop(signum, frame):
        received["signum"] = signum
        raise KeyboardInterrupt

    # A signal the caller ignores (nohup, a background job's SIGINT) stays ignored.
    watched = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, stop) for signum in watched}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


@contextlib.contextmanager
def _trial_lock(trial_dir: Path):
    """Yields whether this process holds the trial. flock's lock belongs to the open file, so the OS drops it
    when its process dies: a killed sweep never leaves a stale lock behind."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield True
        return
    with open(trial_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = True
        except BlockingIOError:
            mine = False
        yield mine  # closing the file releases the lock


def _run_job(spec: dict, trial_dir: str, context: dict) -> dict | None:
    """Run a trial under its lock and write its result.json; None when another process holds the trial.
    The result is written before the lock is released, so no process can find the trial free and unfinished
    just after another one finished it."""
    from econlm.runinfo import write_json

    path = Path(trial_dir) / "result.json"
    with _trial_lock(Path(trial_dir)) as mine:
        if not mine:
            return None
        done = _finished_since(path, context["started"])
        if done is not None:
            return done  # another sweep on this folder finished it after this one looked
        result = run_trial(spec, trial_dir, context)
        write_json(path, result)
        return result


def _finished_since(path: Path, started: float) -> dict | None:
    """A trial's result that counts for a sweep begun at ``started``: a success from any time, a failure
    only when it happened during this sweep (an older failure is retried)."""
    result = _read_json(path, required=RESULT_KEYS)
    if result is None:
        return None
    if result.get("status") == "ok" or path.stat().st_mtime >= started:
        return result
    return None


class _InProcess:
    trial: str | None = None  # the trial running now, to name it when a signal stops the sweep

    def run(self, jobs: list[tuple[dict, str, dict]], on_result) -> None:
        for spec, trial_dir, context in jobs:
            self.trial = spec["id"]
            result = _run_job(spec, trial_dir, context)
            self.trial = None
            on_result(spec, result)


class _OnRay:
    trial: str | None = None

    def __init__(self, address: str, resources: dict):
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs Ray: install the extra with  pip install 'econlm[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                try:
                    ray.init(address=address, log_to_driver=False)
                except ConnectionError as error:
                    raise UserError(
                        f"could not reach a Ray cluster at '{address}': {error}; use --ray local to "
                        "start one on this machine"
                    ) from None
        self.remote = ray.remote(num_cpus=resources.get("num_cpus", 1), num_gpus=resources.get("num_gpus", 0))(_run_job)

    def run(self, jobs, on_result) -> None:
        pending = {self.remote.remote(spec, trial_dir, context): spec for spec, trial_dir, context in jobs}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            on_result(pending.pop(done[0]), self.ray.get(done[0]))


def run_sweep(
    config: SweepConfig | dict, out: str | Path, ray: str | None = None, progress: bool = True
) -> list[dict]:
    """Run every trial not finished yet; returns all results (finished earlier or now).

    ``config`` is what :func:`load_sweep` read from a file, or a sweep built in code (a :class:`SweepConfig`
    or a mapping with a sweep file's keys): either is validated exactly as a file is, before anything runs.

    Raises:
        SweepStopped: SIGTERM or Ctrl-C stopped the sweep; what finished is recorded, a rerun continues.
    """
    from econlm.training import Interrupted

    config = sweep_config(config)
    received: dict = {}
    runner = None
    try:
        with _stop_on_signals(received):
            runner = _OnRay(ray, config.resources) if ray else _InProcess()
            return _run_sweep(config, Path(out), runner, progress)
    except (Interrupted, KeyboardInterrupt) as stop:
        # train() says which signal stopped it; elsewhere the handlers above noted it
        signum = getattr(stop, "signum", None) or received.get("signum", signal.SIGINT)
        raise SweepStopped(signum, runner.trial if runner else None) from None


def _run_sweep(config: SweepConfig, out: Path, runner, progress: bool) -> list[dict]:
    from econlm.analysis import write_pareto
    from econlm.progress import bar
    from econlm.runinfo import atomic_write_text, run_metadata

    started = time.time()
    (out / "trials").mkdir(parents=True, exist_ok=True)
    _record_config(out / "sweep.json", config, run_metadata())
    results: dict[str, dict] = {}
    order: list[str] = []
    elsewhere: set[str] = set()  # trials another process was running when this one reached them

    def load_existing(specs):
        for spec in specs:
            if spec["id"] not in order:
                order.append(spec["id"])
            result = _read_json(out / "trials" / spec["id"] / "result.json", required=RESULT_KEYS)
            if result is not None and result.get("status") == "ok":
                results[spec["id"]] = result

    def pick_up_elsewhere() -> None:
        for tid in sorted(elsewhere):
            result = _finished_since(out / "trials" / tid / "result.json", started)
            if result is not None:
                results[tid] = result
                elsewhere.discard(tid)

    def write_results_jsonl() -> list[dict]:
        """results.jsonl: this sweep's results in its order, then the other trials in the folder. Several sweep
        files may share one folder (a second seed, a finer grid), so the folder is read again at every write:
        another sweep may have finished trials since this one began, and a reader (a report, a summary) takes
        this file mid-sweep for the folder's index."""
        mine = [results[i] for i in order if i in results]
        rows = mine + [r for i, r in sorted(_folder_results(out).items()) if i not in results]
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
        return rows

    def record(spec: dict, result: dict | None) -> None:
        pbar.update(1)
        if result is None:
            elsewhere.add(spec["id"])
            print(f"econlm: trial {spec['id']} is running in another process; skipped", file=sys.stderr)
            return
        results[result["id"]] = result
        write_results_jsonl()
        pbar.set_postfix_str(f"{result['id'][:40]} {result['status']}")

    plain = [spec for spec in expand(config) if _is_plain(spec["settings"])]
    context = {"compact": config.compact, "started": started, "plain": plain}
    phases = [lambda: expand(config), lambda: market_specs(config, results), lambda: baseline_specs(config, results)]
    with bar(desc=f"sweep {config.name}", unit="trial", enabled=progress) as pbar:
        for make_specs in phases:
            specs = make_specs()
            load_existing(specs)
            todo = [s for s in specs if s["id"] not in results]
            pbar.total = (pbar.total or 0) + len(todo)
            pbar.refresh()
            runner.run([(s, str(out / "trials" / s["id"]), context) for s in todo], record)
            pick_up_elsewhere()
    all_results = [results[i] for i in order if i in results]
    write_pareto(write_results_jsonl(), out, config.compute_axis)  # also when every trial had finished before
    return all_results


# ---------------------------------------------------------------------------------------------------------
# Reading back what a sweep wrote

RESULT_KEYS = ("id", "kind", "settings", "status")


def _read_json(path: Path, required: tuple[str, ...] = (), set_aside: bool = True) -> dict | None:
    """A JSON object the sweep wrote earlier, or None when there is none. A damaged one (cut short by a full
    disk or a copy, or overwritten) is set aside with a warning, so that the step that wrote it runs again
    instead of the sweep failing on every rerun."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as error:  # also UnicodeDecodeError: garbage bytes
        problem = f"not valid JSON: {str(error).splitlines()[0]}"
    else:
        if isinstance(data, dict) and all(key in data for key in required):
            return data
        problem = f"not a JSON object with {', '.join(required)}" if required else "not a JSON object"
    if set_aside:
        _set_aside(path, problem)
    return None


def _set_aside(path: Path, problem: str) -> None:
    """Rename ``path`` to ``<name>.corrupt-<time>``: never deleted, someone may want to look at it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for n in itertools.count(1):
        if not target.exists():
            break
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        path.rename(target)
    except FileNotFoundError:
        return  # another sweep on this folder set it aside first
    print(f"econlm: warning: {path} is damaged ({problem}); moved it to {target.name}, redoing it", file=sys.stderr)


def _folder_results(out: Path) -> dict[str, dict]:
    """Every trial result already in the folder (this sweep's and those of other sweep files)."""
    found = {}
    for path in sorted((out / "trials").glob("*/result.json")):
        result = _read_json(path, required=RESULT_KEYS)
        if result is not None:
            found[result["id"]] = result
    return found


def _record_config(path: Path, config: SweepConfig, meta: dict) -> None:
    """sweep.json: this sweep's config and metadata, plus every config that has run into the folder."""
    from econlm.runinfo import write_json

    previous = _read_json(path, required=("config",)) or {}
    configs = dict(previous.get("configs") or {})
    if previous.get("config") and previous["config"].get("name") not in configs:
        configs[previous["config"]["name"]] = previous["config"]
    configs[config.name] = config.__dict__
    write_json(path, {"config": config.__dict__, "meta": meta, "configs": configs})
