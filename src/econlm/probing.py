"""The scarcity probe: score a model under shrinking attention budgets and record how attention reallocates.

For each budget the model scores the task with :func:`~econlm.attention.budgeted_attention` active, and
the streaming statistics give the mean Gini and entropy of attention rows per layer and head.

Example::

    result = run_probe(ProbeConfig(model="minilm", task="stsb", budgets=("full", "8", "2"), limit=200))
    save_probe(result, "runs/probe")
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from econlm.attention import Budget, budgeted_attention, parse_budgets
from econlm.config import check_max_length
from econlm.errors import UserError
from econlm.userdata import DataFields

DEFAULT_BUDGETS = ("full", "32", "16", "8", "4", "2", "1")


@dataclass(frozen=True)
class ProbeConfig(DataFields):
    """Settings of one probe run; validated on construction (before any model is loaded)."""

    model: str = "minilm"
    task: str = "stsb"
    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    split: str = "dev"
    limit: int | None = None  # examples (GLUE) or tokens (language modelling)
    batch_size: int = 32
    max_length: int = 128
    stride: int | None = None  # language modelling; default max_length // 2
    data_dir: str | None = None
    seed: int = 0
    ffn_eps: float | None = None  # FFN activations with |a| < ffn_eps are set to zero while scoring
    token_budget: str | None = None  # encoders: share of tokens kept after each layer ("0.5" or "1,0.8,...")
    # Time the token budget (or the checkpoint's learned thresholds) against every token, round by round, on
    # real dev batches with dynamic padding: this many rounds (0: no timing) over this many examples.
    latency_repeats: int = 0
    latency_examples: int = 128

    def __post_init__(self) -> None:

        budgets = parse_budgets(",".join(self.budgets))
        object.__setattr__(self, "budgets", tuple(b.label for b in budgets))
        if self.token_budget is not None:
            from econlm.tokens import TokenSchedule

            object.__setattr__(self, "token_budget", TokenSchedule.parse(self.token_budget).label)
        from econlm.data import normalise_data_fields

        normalise_data_fields(self)
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, not {self.limit}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {self.batch_size}")
        check_max_length(self.max_length)
        if self.ffn_eps is not None and not (self.ffn_eps > 0 and self.ffn_eps < float("inf")):
            raise UserError(f"--ffn-eps must be a positive number, not {self.ffn_eps}")
        if self.latency_repeats < 0 or self.latency_examples < 1:
            raise UserError("--latency-repeats must be >= 0 (0: no timing) and --latency-examples at least 1")

    def parsed_budgets(self) -> list[Budget]:
        return [Budget.parse(b) for b in self.budgets]


@dataclass
class ProbeResult:
    """One row per budget (score, Gini, entropy, effective compute, per-layer statistics) and how it was made."""

    config: ProbeConfig | None
    rows: list[dict]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.meta, "rows": self.rows}

    def row(self, budget) -> dict:
        """The row of one budget (``"full"``, ``8``, ``"25%"``...)."""
        label = Budget.parse(str(budget)).label
        for row in self.rows:
            if row["budget"] == label:
                return row
        raise KeyError(f"no row for budget {label}; probed: {', '.join(r['budget'] for r in self.rows)}")


def probe(
    model,
    tokenizer,
    examples,
    budgets=("full",),
    *,
    task=None,
    batch_size: int = 32,
    max_length: int = 128,
    stride: int | None = None,
    ffn_eps: float | None = None,
    token_budget=None,
    progress: bool = False,
) -> ProbeResult:
    """The scarcity probe on a model you hold (any supported Hugging Face model, in memory).

    Args:
        model: the model; its attention is switched to the budgeted function and back for each budget.
        tokenizer: its tokenizer.
        examples: ``econlm.data.Example`` s (scored with ``task``'s metric), one text corpus (a ``str``, for a
            language-modelling ``task``: perplexity), or plain texts, strings or (text, text) pairs: then no
            score, only how the model spends attention and compute on them.
        budgets: ``"full"``, keys per query (``8``) or fractions (``0.25``, ``"25%"``).
        task: a task name or :class:`~econlm.data.Task`; needed to score.
        token_budget: encoders only: a share of each example's tokens kept after every layer (``0.5``) or one
            per layer (``"1,0.8,0.6,..."``); see :func:`econlm.tokens.token_budget`. A model with learned token
            thresholds attached (:func:`econlm.load` of an ``econlm train --cost tokens`` checkpoint) is probed
            with them, and its token MACs are reported the same way.
    """
    import torch

    from econlm import evaluate
    from econlm.data import Example, get_task
    from econlm.models import model_head

    check_max_length(max_length)
    parsed = parse_budgets(",".join(str(b) for b in budgets))
    task = get_task(task) if isinstance(task, str) else task
    head = model_head(model.config)
    schedule = _token_schedule(model, token_budget)
    model.eval()
    if isinstance(examples, str):
        if task is None or not task.is_lm:
            raise UserError("a text corpus is scored by a language-modelling task: pass task='wikitext2' (say)")
        ids = evaluate.lm_token_ids(tokenizer, examples, None)
        per_budget = evaluate.lm_batches(len(ids), max_length, stride, batch_size)

        def score_once(on_batch, on_inputs):
            return evaluate.score_lm(
                model,
                ids,
                max_length=max_length,
                stride=stride,
                batch_size=batch_size,
                on_batch=on_batch,
                on_inputs=on_inputs,
            )
    elif examples and all(isinstance(e, Example) for e in examples) and task is not None:
        per_budget = evaluate.glue_batches(task, examples, head, batch_size)

        def score_once(on_batch, on_inputs):
            return evaluate.score_glue(
                model,
                tokenizer,
                task,
                examples,
                head,
                batch_size=batch_size,
                max_length=max_length,
                on_batch=on_batch,
                on_inputs=on_inputs,
            )
    else:
        texts = [e.text_a if isinstance(e, Example) else e for e in examples]
        pairs = [e.text_b if isinstance(e, Example) else None for e in examples]
        if not texts:
            raise UserError("probe needs at least one example")
        per_budget = evaluate.count_batches(len(texts), batch_size)

        def score_once(on_batch, on_inputs):
            return _forward_only(model, tokenizer, texts, pairs, batch_size, max_length, on_batch, on_inputs)

    with torch.no_grad():
        rows, score = _probe_rows(
            model, parsed, ffn_eps, score_once, per_budget, "probe", progress, schedule, tokenizer
        )
    meta = {
        "model": getattr(model.config, "name_or_path", "") or model.config.model_type,
        "model_type": model.config.model_type,
        "head": head,
        "task": task.name if task else None,
        "examples_scored": rows[0]["examples"] if rows else 0,
        "unit_of_examples": "tokens" if task is not None and task.is_lm else "examples",
        "scoring": score.details if score else {},
        "token_budget": _token_meta(schedule, model),
    }
    return ProbeResult(config=None, rows=rows, meta=meta)


def _token_schedule(model, token_budget) -> tuple[float, ...] | None:
    """The per-layer token budget for ``model``, checked (an encoder, one fraction or one per layer, not on top
    of learned thresholds); None if unset."""
    if token_budget is None:
        return None
    from econlm import arch
    from econlm.tokens import TokenSchedule, attached_rule, check_encoder

    check_encoder(model)
    rule = attached_rule(model)
    if rule is not None:
        raise UserError(
            f"this model drops tokens by {rule.source}, and the probe reports what that saves; --token-budget "
            "would drop tokens a second time: leave it out"
        )
    return TokenSchedule.parse(token_budget).per_layer(len(arch.blocks(model)))


def _token_meta(schedule: tuple[float, ...] | None, model=None) -> dict | None:
    from econlm.tokens import attached_rule, attached_thresholds

    learned = attached_thresholds(model) if model is not None else None
    fixed = attached_rule(model) if model is not None and learned is None else None
    if fixed is not None:  # the schedule it was fine-tuned under: reported as a schedule, and said so
        schedule = fixed.schedule
    if learned is not None:
        from econlm.learned_tokens import VALUE_DEFINITION

        return {
            "schedule": None,
            "thresholds": list(learned.thresholds),
            "rule": "learned thresholds (token_thresholds.json): after layer l a token whose value is below "
            "thresholds[l] leaves the sequence for every later layer; the first token and the tokenizer's "
            "[CLS]/[SEP]/BOS/EOS are always kept. Output as for a schedule (a dropped token keeps its state)",
            "value": VALUE_DEFINITION,
            "token_macs": "MACs of the blocks over each example's real tokens, each layer on the tokens it ran on "
            "(econlm.flops.shortened_macs); token_reference_macs: the full model on the same real tokens; padding, "
            "the selection and the task head not counted",
            "effective_compute_note": "effective_macs_per_token is per token a layer runs on; the token budget's "
            "saving is token_macs_ratio",
        }
    if schedule is None:
        return None
    return {
        "schedule": list(schedule),
        **({"source": f"the model's own: {fixed.source}"} if fixed is not None else {}),
        "rule": "after layer l each example keeps its ceil(schedule[l] * real length) tokens that receive the most "
        "attention in layer l (column sums of the probabilities over heads and real query rows); the first token "
        "and the tokenizer's [CLS]/[SEP]/BOS/EOS are always kept; later layers run on the kept tokens only. The "
        "output is put back at full length: a dropped token keeps the state it had when dropped (mean pooling "
        "averages every token at the last layer it reached)",
        "token_macs": "MACs of the blocks over each example's real tokens, each layer on the tokens it ran on "
        "(econlm.flops.shortened_macs); token_reference_macs: the full model on the same real tokens; padding, the "
        "selection and the task head not counted",
        "effective_compute_note": "effective_macs_per_token is per token a layer runs on; the token budget's "
        "saving is token_macs_ratio",
    }


def _forward_only(model, tokenizer, texts, pairs, batch_size, max_length, on_batch, on_inputs):
    """Run unlabeled texts through the model (statistics only): a Score with no metric."""
    import math

    import torch

    from econlm.evaluate import Score

    device = next(model.parameters()).device
    if tokenizer.pad_token is None:  # decoders often have none; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    for start in range(0, len(texts), batch_size):
        chunk, second = texts[start : start + batch_size], pairs[start : start + batch_size]
        has_pairs = any(b is not None for b in second)
        encoded = tokenizer(
            chunk,
            second if has_pairs else None,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        batch = {k: v.to(device) for k, v in encoded.items()}
        on_inputs(batch)
        with torch.no_grad():
            model(**batch)
        on_batch()
    details = {"method": "statistics only: the texts carry no labels, so no score is computed"}
    return Score(metric="none", value=math.nan, metrics={}, examples=len(texts), details=details)


def run_probe(config: ProbeConfig, model=None, progress: bool = True) -> ProbeResult:
    """Probe ``config.model`` on ``config.task`` at every budget; returns one row per budget.

    Args:
        config: the probe settings.
        model: an already loaded :class:`~econlm.models.LoadedModel` (tests, notebooks); else loaded here.
        progress: show a progress bar.
    """

    import torch

    from econlm import data, evaluate
    from econlm.models import check_spec, load_model
    from econlm.runinfo import run_metadata

    torch.manual_seed(config.seed)
    task = data.get_task(config.task)
    budgets = config.parsed_budgets()
    # Check names and load the data first: a typo or a missing file should not cost a model load.
    if model is None:
        check_spec(config.model)
        if task.is_lm:  # windows longer than the context: refused before the load and its progress bar
            from econlm.config import check_context
            from econlm.models import load_config

            check_context(config.max_length, load_config(config.model)[0])
    if task.is_lm:
        text = data.load_text(task, config.split, config.data_dir)
        examples = None
    else:
        examples = data.load_examples(task, config.split, config.data_dir, config.limit)
    loaded = model or load_model(config.model)
    evaluate.scoring_method(task, loaded.head)
    model_, tokenizer = loaded.model, loaded.tokenizer
    schedule = _token_schedule(model_, config.token_budget)
    _check_timed_tokens(model_, task, config)
    model_.eval()

    if task.is_lm:
        ids = evaluate.lm_token_ids(tokenizer, text, config.limit)
        per_budget = evaluate.lm_batches(len(ids), config.max_length, config.stride, config.batch_size)
    else:
        per_budget = evaluate.glue_batches(task, examples, loaded.head, config.batch_size)

    def score_once(on_batch, on_inputs):
        if task.is_lm:
            return evaluate.score_lm(
                model_,
                ids,
                max_length=config.max_length,
                stride=config.stride,
                batch_size=config.batch_size,
                on_batch=on_batch,
                on_inputs=on_inputs,
            )
        return evaluate.score_glue(
            model_,
            tokenizer,
            task,
            examples,
            loaded.head,
            batch_size=config.batch_size,
            max_length=config.max_length,
            on_batch=on_batch,
            on_inputs=on_inputs,
        )

    started = time.perf_counter()
    rows, score = _probe_rows(
        model_,
        budgets,
        config.ffn_eps,
        score_once,
        per_budget,
        f"probe {config.model} on {task.name}",
        progress,
        schedule,
        tokenizer,
    )
    meta = run_metadata(seed=config.seed, config=asdict(config))
    meta.update(
        {
            "model": config.model,
            "model_location": loaded.resolved.location,
            "model_type": model_.config.model_type,
            "head": loaded.head,
            "task": task.name,
            "split": config.split,
            "examples_scored": rows[0]["examples"] if rows else 0,
            "unit_of_examples": "tokens" if task.is_lm else "examples",
            # examples with more than max_length tokens, scored cut (LM windows never cut anything)
            "truncated_examples": score.details.get("truncated_examples", 0),
            # how every row was scored; per-budget quantities (mean NLL) live in the rows
            "scoring": {k: v for k, v in score.details.items() if k != "mean_nll_nats"},
            "statistics": "mean over layers, heads and real query rows of per-row Gini and entropy (nats), "
            "over the keys the padding/causal masks allow; keys dropped by the budget count as zeros",
            "effective_compute": "MACs per real token (FLOPs = 2 x MACs) of the blocks for an implementation that "
            "skips masked keys, multiplies values over kept keys only and runs the down projection over non-zero "
            "FFN activations only (see econlm.flops.effective_macs_per_token); the reference is the same at the "
            "full budget with no activation skipped. The score in the same row was measured on exactly that "
            "computation (budget and FFN threshold applied).",
            "seconds": time.perf_counter() - started,
            "token_budget": _token_meta(schedule, model_),
        }
    )
    if config.latency_repeats:
        meta["token_budget_latency"] = token_budget_latency(loaded, examples, config)
    return ProbeResult(config=config, rows=rows, meta=meta)


def _check_timed_tokens(model, task, config: ProbeConfig) -> None:
    """--latency-repeats times what a token budget saves: refused in one line where there is none to time."""
    from econlm.tokens import attached_rule

    if not config.latency_repeats:
        return
    if task.is_lm:
        raise UserError("--latency-repeats times a token budget, which encoders on GLUE tasks have; leave it out")
    if config.token_budget is None and attached_rule(model) is None:
        raise UserError(
            "--latency-repeats times a token budget against every token: give --token-budget F (or probe a "
            "checkpoint trained with --cost tokens or --token-budget)"
        )


def token_budget_latency(loaded, examples, config: ProbeConfig) -> dict:
    """The token budget (or the learned thresholds) against every token, timed round by round in one run on
    real dev batches: ``config.latency_examples`` examples spread over the split (its length mix), batches of
    ``config.batch_size`` each padded to its own longest row, so the full model never computes padding that the
    budget would then be credited with dropping."""
    import torch

    from econlm.latency import batches_call, example_batches, measure_interleaved, measure_token_budget
    from econlm.tokens import attached_rule, every_token

    model, tokenizer = loaded.model, loaded.tokenizer
    subset = examples[:: max(1, len(examples) // config.latency_examples)][: config.latency_examples]
    batches = example_batches(tokenizer, subset, batch_size=config.batch_size, max_length=config.max_length)
    repeats, warmup = config.latency_repeats, 2
    learned = attached_rule(model)  # learned thresholds, or the schedule it was fine-tuned under
    if learned is None:
        measured = measure_token_budget(
            model, batches, config.token_budget, tokenizer=tokenizer, warmup=warmup, repeats=repeats
        )
        timings, speedup = measured["timings"], measured["speedup"]
        full, budget = "full", "token_budget"
    else:
        call = batches_call(model, batches)
        timings = measure_interleaved(  # the same model, its rule off for the "full" calls
            {"full": call, "learned": call}, warmup=warmup, repeats=repeats, around={"full": lambda: every_token(model)}
        )
        full, budget = "full", "learned"
        speedup = timings[full].median / timings[budget].median
    return {
        "schedule": config.token_budget or learned.label,
        "speedup": speedup,
        "median_seconds": {"every_token": timings[full].median, "token_budget": timings[budget].median},
        "examples": len(subset),
        "batches": len(batches),
        "batch_size": config.batch_size,
        "tokens_real": sum(int(b["attention_mask"].sum()) for b in batches),
        "tokens_padded": sum(int(b["input_ids"].numel()) for b in batches),
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "timed_on": "real dev batches, dynamic padding (each padded to its own longest row); the model with every "
        "token and with the token budget called in turn each round (medians of the rounds)",
    }


def _probe_rows(
    model_, budgets, ffn_eps, score_once, per_budget: int, desc: str, progress: bool, schedule=None, tokenizer=None
):
    """One row per budget: the score ``score_once(on_batch, on_inputs)`` measures under that budget (and the
    FFN threshold and token budget), with the attention statistics and the effective compute of exactly that
    computation, and with a token budget the exact MACs of the shortened sequences."""
    from contextlib import ExitStack

    from econlm.activations import TokenMask, hard_threshold, record_sparsity
    from econlm.flops import Structure, effective_macs_per_token
    from econlm.progress import bar
    from econlm.tokens import attached_rule, token_budget

    structure = Structure.of_model(model_)
    learned = attached_rule(model_)
    rows, score = [], None
    with bar(total=per_budget * len(budgets), desc=desc, unit="batch", enabled=progress) as pbar:
        for budget in budgets:
            pbar.set_postfix_str(f"budget {budget.label}")
            budget_started = time.perf_counter()
            tokens = TokenMask()
            with ExitStack() as stack:
                stats = stack.enter_context(budgeted_attention(model_, budget))
                kept = None
                if learned is not None:  # the token rule the model carries: record what it drops
                    kept = stack.enter_context(learned.recording(token_mask=tokens))
                elif schedule is not None:  # inside the budgeted attention, whose probabilities it reads
                    kept = stack.enter_context(token_budget(model_, schedule, tokenizer=tokenizer, token_mask=tokens))
                if ffn_eps is not None:
                    stack.enter_context(hard_threshold(model_, ffn_eps))
                # Registered after the threshold, so it sees the activations the model really uses.
                zeros = stack.enter_context(record_sparsity(model_, (0.0,), tokens))
                score = score_once(lambda: pbar.update(1), lambda batch: tokens.set(batch.get("attention_mask")))
            summary = stats.summary()
            zero_share = zeros.summary()["per_layer"]["0e+00"]
            layer_stats = [
                {
                    "allowed_keys_mean": entry["allowed_keys_mean"],
                    "kept_keys_mean": entry["kept_keys_mean"],
                    "ffn_active_share": 1.0 - zero_share[i],
                }
                for i, entry in enumerate(summary["per_layer"])
            ]
            effective = effective_macs_per_token(structure, layer_stats)
            token_row, token_layers = _token_row(kept, structure, len(summary["per_layer"]))
            rows.append(
                {
                    "budget": budget.label,
                    "metric": score.metric,
                    "score": score.value,
                    "metrics": score.metrics,
                    "gini": summary["gini"],
                    "entropy": summary["entropy"],
                    "attention_rows": summary["rows"],
                    "examples": score.examples,
                    "seconds": time.perf_counter() - budget_started,
                    "ffn_eps": ffn_eps,
                    "mean_nll_nats": score.details.get("mean_nll_nats"),
                    "ffn_active_share": 1.0 - zeros.summary()["overall"]["0e+00"],
                    "effective_macs_per_token": effective["effective_macs_per_token"],
                    "reference_macs_per_token": effective["reference_macs_per_token"],
                    "effective_ratio": effective["ratio"],
                    **token_row,
                    "per_layer": [
                        {**entry, **stat, "effective_macs_per_token": eff["effective"], **tok}
                        for entry, stat, eff, tok in zip(
                            summary["per_layer"], layer_stats, effective["by_layer"], token_layers
                        )
                    ],
                }
            )
    return rows, score


def _token_row(kept, structure, layers: int) -> tuple[dict, list[dict]]:
    """A row's token-budget fields (schedule, exact MACs of the shortened sequences) and per-layer entries."""
    if kept is None:
        return {}, [{}] * layers
    macs = kept.macs(structure)
    row = {
        "token_budget": kept.label,
        "token_macs": macs["macs"],
        "token_reference_macs": macs["reference_macs"],
        "token_macs_ratio": macs["ratio"],
    }
    if kept.thresholds is not None:  # learned: the threshold after each layer (none after the last)
        rules = [("token_threshold", t) for t in (*kept.thresholds, None)]
    else:
        rules = [("token_budget", f) for f in kept.schedule]
    per_layer = [
        {rule[0]: rule[1], "tokens_mean": entry["tokens_mean"], "token_macs": entry["macs"]}
        for rule, entry in zip(rules, macs["by_layer"])
    ]
    return row, per_layer


CSV_COLUMNS = [
    "budget",
    "metric",
    "score",
    "gini",
    "entropy",
    "attention_rows",
    "examples",
    "ffn_eps",
    "ffn_active_share",
    "effective_macs_per_token",
    "reference_macs_per_token",
    "effective_ratio",
    "seconds",
]
TOKEN_COLUMNS = ["token_budget", "token_macs", "token_reference_macs", "token_macs_ratio"]


def save_probe(result: ProbeResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``probe.json``, ``probe.csv`` and ``probe.png`` into ``out``; returns their paths."""
    from econlm.plots import probe_figure, save_figure
    from econlm.runinfo import write_csv, write_json

    out = Path(out)
    paths = {"json": out / "probe.json", "csv": out / "probe.csv", "png": out / "probe.png"}
    write_json(paths["json"], {**result.meta, "rows": result.rows})
    csv_rows = []
    for row in result.rows:
        flat = {k: row[k] for k in CSV_COLUMNS}
        flat.update({k: row[k] for k in TOKEN_COLUMNS if k in row})
        flat.update({f"metric_{k}": v for k, v in row["metrics"].items()})
        csv_rows.append(flat)
    extra = sorted({k for r in csv_rows for k in r} - set(CSV_COLUMNS))
    write_csv(paths["csv"], csv_rows, CSV_COLUMNS + extra)
    title = (
        f"{result.meta['model']} on {result.meta['task']} {result.meta['split']} "
        f"({result.meta['examples_scored']} {result.meta['unit_of_examples']})"
    )
    save_figure(probe_figure(result.rows, title), paths["png"])
    return paths


def format_table(rows: list[dict]) -> str:
    """A short fixed-width table of budget, score, Gini and entropy."""
    metric = rows[0]["metric"] if rows else "score"
    tokens = bool(rows) and "token_macs_ratio" in rows[0]
    lines = [f"{'budget':>7}  {metric:>10}  {'gini':>6}  {'entropy':>7}  {'eff. compute':>12}"]
    if tokens:
        lines[0] += f"  {'token MACs':>10}"
    for r in rows:
        lines.append(
            f"{r['budget']:>7}  {r['score']:>10.4f}  {r['gini']:>6.3f}  {r['entropy']:>7.3f}  "
            f"{r['effective_ratio']:>12.3f}"
        )
        if tokens:
            lines[-1] += f"  {r['token_macs_ratio']:>10.3f}"
    if tokens and rows[0]["token_budget"] == "learned":
        lines.append("token budget: the model's learned thresholds; token MACs: shortened / full")
    elif tokens:
        lines.append(f"token budget {rows[0]['token_budget']} (kept share per layer); token MACs: shortened / full")
    return "\n".join(lines)
