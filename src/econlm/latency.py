"""A latency harness: warm-up, many timed repetitions, median and spread, with the conditions recorded.

On a GPU each repetition is timed with CUDA events (and synchronised); on the CPU with
``time.perf_counter``. Quote ratios of medians measured in one run, not absolute times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls after ``warmup`` untimed ones."""

    median: float
    p10: float
    p90: float
    mean: float
    stdev: float
    repeats: int
    warmup: int
    device: str
    threads: int
    timer: str

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure(fn: Callable[[], object], *, warmup: int = 5, repeats: int = 30, device: str = "cpu") -> Timing:
    """Time ``fn()``; returns median, 10th/90th percentiles, mean and standard deviation in seconds."""
    return measure_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, device=device)["fn"]


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 5,
    repeats: int = 30,
    device: str = "cpu",
    per_round: int = 1,
    around: Mapping[str, Callable[[], AbstractContextManager]] | None = None,
) -> dict[str, Timing]:
    """Time several functions round by round: each round calls every function (``per_round`` times), so a
    burst of machine noise (another process, a frequency change) hits all of them alike and their ratio stays
    fair. The order within a round rotates, so no function always runs first (right after the others warmed
    the caches). ``around[name]()`` is a context entered around that function's calls in each round (an
    attention implementation switched on, say), outside the timed region; after entering it, one untimed
    call warms up again."""
    import torch

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    names = list(fns)
    around = around or {}
    for _ in range(warmup):
        for name in names:
            with _entered(around.get(name)):
                fns[name]()
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            with _entered(around.get(name)):
                if name in around:
                    fns[name]()  # the switch may have cold caches: one untimed call
                times[name].extend(_time_once(fns[name], on_gpu) for _ in range(per_round))
    threads = torch.get_num_threads()
    return {
        name: _summarise(values, warmup, device, threads, "cuda-events" if on_gpu else "perf_counter")
        for name, values in times.items()
    }


def _entered(factory):
    return factory() if factory is not None else nullcontext()


def model_call(model, inputs: Mapping) -> Callable[[], None]:
    """The one closure every latency measurement times: a no-grad forward of ``model`` on ``inputs``, passing
    only the inputs its forward accepts (token_type_ids to BERT, not to Llama)."""
    import inspect

    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    kwargs = {k: v for k, v in inputs.items() if k in accepted}

    def call() -> None:
        with torch.no_grad():
            model(**kwargs)

    return call


def random_inputs(batch: int, seq_len: int, low: int = 1000, high: int = 2000) -> dict:
    """A full (unpadded) batch of random token ids: what dense-latency measurements run on."""
    import torch

    ids = torch.randint(low, high, (batch, seq_len))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _time_once(fn: Callable[[], object], on_gpu: bool) -> float:
    if on_gpu:
        import torch

        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _summarise(times: list[float], warmup: int, device: str, threads: int, timer: str) -> Timing:
    ordered = sorted(times)
    return Timing(
        median=statistics.median(ordered),
        p10=_quantile(ordered, 0.1),
        p90=_quantile(ordered, 0.9),
        mean=statistics.fmean(ordered),
        stdev=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        repeats=len(ordered),
        warmup=warmup,
        device=device,
        threads=threads,
        timer=timer,
    )


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them when there are fewer): a timed subset with the
    whole split's mix of lengths, not its first rows (dev splits are often grouped by source)."""
    n = len(items)
    return [items[i * n // count] for i in range(count)] if n > count else list(items)


def text_batches(tokenizer, texts, pairs=None, *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """Real batches of ``texts`` (and ``pairs``) with dynamic padding: grouped by length, each padded to its own
    longest row, as scoring runs them (:func:`econlm.evaluate.encode`, cut at ``max_length``)."""
    from econlm.evaluate import _padded_batches, encode

    input_ids, token_types, _ = encode(tokenizer, list(texts), None if pairs is None else list(pairs), max_length)
    return [dict(batch) for _, batch in _padded_batches(tokenizer, input_ids, token_types, batch_size)]


def example_batches(tokenizer, examples, *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """:func:`text_batches` of task examples: their first texts, and their second ones when the task has pairs."""
    pairs = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    return text_batches(tokenizer, [e.text_a for e in examples], pairs, batch_size=batch_size, max_length=max_length)


def batches_call(model, batches) -> Callable[[], None]:
    """One closure that runs ``model`` (no grad) over every batch in turn: one timed call is one pass."""
    calls = [model_call(model, batch) for batch in batches]

    def call() -> None:
        for fn in calls:
            fn()

    return call


def measure_token_budget(
    model,
    batches,
    schedule,
    *,
    tokenizer=None,
    warmup: int = 2,
    repeats: int = 10,
    device: str = "cpu",
) -> dict:
    """Time ``model`` with and without a token budget on the same real batches, round by round.

    Args:
        model: an encoder (see :func:`econlm.tokens.token_budget`).
        batches: real batches, each padded to its own longest row (:func:`text_batches`).
        schedule: the token budget (``0.5``, ``"1,0.8,0.6,..."``).
        tokenizer: its tokenizer, whose special tokens the budget always keeps.

    Returns ``{"timings": {"full": Timing, "token_budget": Timing[, "full_eager": Timing]}, "speedup",
    "attn_implementation", "token_budget_attn_implementation"}``. The budget reads attention probabilities,
    so under sdpa it runs eager attention; then ``full_eager`` (the full model on eager attention) is timed
    too, and ``speedup_same_attention`` compares the two eager runs. ``speedup`` is always full (the model
    as it is) over token budget, in medians.
    """
    from econlm.tokens import _RETURNS_WEIGHTS, TokenSchedule, token_budget

    parsed = TokenSchedule.parse(schedule)
    fn = batches_call(model, batches)
    impl = model.config._attn_implementation
    budget_impl = impl if impl in _RETURNS_WEIGHTS or parsed.is_full else "eager"
    fns = {"full": fn, "token_budget": fn}
    around = {"token_budget": lambda: token_budget(model, parsed, tokenizer=tokenizer)}
    if budget_impl != impl:
        fns["full_eager"] = fn
        around["full_eager"] = lambda: _attention_implementation(model, budget_impl)
    timings = measure_interleaved(fns, warmup=warmup, repeats=repeats, device=device, around=around)
    out = {
        "timings": timings,
        "speedup": timings["full"].median / timings["token_budget"].median,
        "schedule": parsed.label,
        "batches": len(batches),
        "attn_implementation": impl,
        "token_budget_attn_implementation": budget_impl,
    }
    if "full_eager" in timings:
        out["speedup_same_attention"] = timings["full_eager"].median / timings["token_budget"].median
    return out


def _attention_implementation(model, name: str):
    """A context in which ``model`` runs the attention implementation ``name``."""
    from contextlib import contextmanager

    @contextmanager
    def switched():
        previous = model.config._attn_implementation
        model.set_attn_implementation(name)
        try:
            yield
        finally:
            model.set_attn_implementation(previous)

    return switched()
