"""Scoring a model on a task: GLUE heads, zero-shot STS-B by cosine similarity, and perplexity.

Every function here runs the model under whatever attention is active (the probe wraps them in
:func:`econlm.attention.budgeted_attention`). Scores are returned with the exact computation they come
from (``details``), so a number is never separated from what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from econlm import metrics
from econlm.config import check_context
from econlm.data import Example, Task
from econlm.errors import UserError


@dataclass
class Score:
    """A task score: the headline ``metric``/``value``, all official metrics, and how it was computed."""

    metric: str
    value: float
    metrics: dict[str, float]
    examples: int  # examples scored (GLUE) or tokens scored (language modelling)
    details: dict


def task_metrics(task: Task, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The task's official metrics (GLUE definitions) for predictions against labels."""
    functions: dict[str, Callable] = {
        "accuracy": metrics.accuracy,
        "f1": metrics.f1_binary,
        "mcc": metrics.matthews_corrcoef,
        "pearson": metrics.pearson,
        "spearman": metrics.spearman,
    }
    return {name: functions[name](predictions, labels) for name in task.metrics}


def scoring_method(task: Task, head: str) -> str:
    """How ``task`` is scored with a model carrying ``head``; a clear error when it cannot be."""
    if task.is_lm:
        if head != "causal-lm":
            raise UserError(
                f"{task.name} is language modelling and needs a causal LM head; this model has a '{head}' "
                "head (encoders such as minilm cannot do it: use a decoder such as smollm2)"
            )
        return "perplexity"
    if head == "seq-cls":
        return "regression-head" if task.kind == "regression" else "classification-head"
    if head == "base" and task.name == "stsb":
        return "cosine-mean-pooled"
    raise UserError(
        f"this model has no classification head for {task.name}; train one with `econlm train --task {task.name}` "
        "and probe the resulting directory (only stsb can be scored zero-shot, by cosine similarity)"
    )


# ---------------------------------------------------------------------------------------------------------
# Batching


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding); longest first, so memory peaks early."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _texts(texts_a, texts_b) -> tuple[list[str], ...]:
    return (list(texts_a),) if texts_b is None else (list(texts_a), list(texts_b))


def encode(tokenizer, texts_a, texts_b, max_length: int):
    """Token ids (and token types, or None) cut to ``max_length``, and which examples were cut.

    One pass without truncation says what truncation removes (verbose=False: no warning about sequences
    longer than the model takes); only the examples that are too long are encoded again, cut.
    """
    full = tokenizer(*_texts(texts_a, texts_b), verbose=False)
    ids, types = list(full["input_ids"]), full.get("token_type_ids")
    types = list(types) if types is not None else None
    cut = [len(x) > max_length for x in ids]
    long = [i for i, c in enumerate(cut) if c]
    if long:
        pairs = None if texts_b is None else [texts_b[i] for i in long]
        short = tokenizer([texts_a[i] for i in long], pairs, truncation=True, max_length=max_length)
        for j, i in enumerate(long):
            ids[i] = short["input_ids"][j]
            if types is not None:
                types[i] = short["token_type_ids"][j]
    return ids, types, cut


def _padded_batches(tokenizer, input_ids, token_types, batch_size) -> Iterator[tuple[list[int], dict]]:
    for indices in length_sorted_batches([len(x) for x in input_ids], batch_size):
        features = [{"input_ids": input_ids[i]} for i in indices]
        if token_types is not None:
            for f, i in zip(features, indices):
                f["token_type_ids"] = token_types[i]
        yield indices, tokenizer.pad(features, return_tensors="pt")


def count_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


# ---------------------------------------------------------------------------------------------------------
# GLUE


@torch.no_grad()
def score_glue(
    model,
    tokenizer,
    task: Task,
    examples: Sequence[Example],
    head: str,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    on_batch: Callable[[], None] | None = None,
    on_inputs: Callable[[dict], None] | None = None,
) -> Score:
    """Score GLUE examples with the model's head, or zero-shot by cosine similarity for STS-B.

    ``on_inputs(batch)`` runs before each forward pass, ``on_batch()`` after it (instrumentation).
    """
    method = scoring_method(task, head)
    if not examples:
        raise UserError(f"no {task.name} examples to score")
    device = next(model.parameters()).device
    labels = [e.label for e in examples]
    pair = examples[0].text_b is not None
    if method == "cosine-mean-pooled":
        hooks = (on_inputs, on_batch)
        pooled = [
            _mean_pooled(model, tokenizer, texts, max_length, batch_size, device, hooks)
            for texts in ([e.text_a for e in examples], [e.text_b for e in examples])
        ]
        (first, cut_a), (second, cut_b) = pooled
        predictions = torch.nn.functional.cosine_similarity(first, second, dim=-1).tolist()
        cut = [a or b for a, b in zip(cut_a, cut_b)]  # each sentence is encoded alone
        details = {"method": method, "pooling": "mean over real tokens", "similarity": "cosine"}
    else:
        predictions = [None] * len(examples)
        texts_b = [e.text_b for e in examples] if pair else None
        input_ids, token_types, cut = encode(tokenizer, [e.text_a for e in examples], texts_b, max_length)
        for indices, batch in _padded_batches(tokenizer, input_ids, token_types, batch_size):
            batch = batch.to(device)
            if on_inputs:
                on_inputs(batch)
            logits = model(**batch).logits
            values = logits.squeeze(-1).tolist() if method == "regression-head" else logits.argmax(-1).tolist()
            for i, v in zip(indices, values):
                predictions[i] = v
            if on_batch:
                on_batch()
        details = {"method": method}
    details.update(
        {
            "max_length": max_length,
            "truncation": "longest_first",
            "truncated_examples": sum(cut),
            "batch_size": batch_size,
        }
    )
    values = task_metrics(task, predictions, labels)
    return Score(task.metric, values[task.metric], values, len(examples), details)


def glue_batches(task: Task, examples: Sequence[Example], head: str, batch_size: int) -> int:
    """How many model calls :func:`score_glue` makes (for progress bars)."""
    per_pass = count_batches(len(examples), batch_size)
    return 2 * per_pass if scoring_method(task, head) == "cosine-mean-pooled" else per_pass


def _mean_pooled(model, tokenizer, texts, max_length, batch_size, device, hooks) -> tuple[torch.Tensor, list[bool]]:
    """Mean-pooled embeddings of ``texts``, and which texts were cut to ``max_length``."""
    on_inputs, on_batch = hooks
    out = torch.empty(len(texts), model.config.hidden_size)
    input_ids, _, cut = encode(tokenizer, texts, None, max_length)
    for indices, batch in _padded_batches(tokenizer, input_ids, None, batch_size):
        batch = batch.to(device)
        if on_inputs:
            on_inputs(batch)
        hidden = model(**batch).last_hidden_state  # (B, T, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        out[indices] = pooled.float().cpu()
        if on_batch:
            on_batch()
    return out, cut


# ---------------------------------------------------------------------------------------------------------
# Language modelling


@dataclass(frozen=True)
class Window:
    """One sliding window: the model sees ``ids[start:end]`` and scores tokens ``ids[score_from:end]``."""

    start: int
    score_from: int
    end: int


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """Windows that score every token but the first exactly once, each with up to ``max_length`` context.

    Each window scores ``stride`` new tokens and reuses the preceding ``max_length - stride`` as context
    (HF's "perplexity of fixed-length models" scheme, without losing a token at window borders).
    """
    if not 0 < stride <= max_length - 1:
        raise UserError(f"stride {stride} must lie in 1..max_length-1 ({max_length - 1})")
    windows = []
    score_from = 1  # the first token has no context and is never scored
    while score_from < n_tokens:
        end = min(score_from + stride, n_tokens)
        windows.append(Window(start=max(0, end - max_length), score_from=score_from, end=end))
        score_from = end
    return windows


def lm_token_ids(tokenizer, text: str, limit_tokens: int | None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:limit_tokens] if limit_tokens else ids


@torch.no_grad()
def score_lm(
    model,
    ids: Sequence[int],
    *,
    max_length: int = 512,
    stride: int | None = None,
    batch_size: int = 4,
    on_batch: Callable[[], None] | None = None,
    on_inputs: Callable[[dict], None] | None = None,
) -> Score:
    """Token-level perplexity with a sliding window; reports the number of scored tokens. A ``max_length``
    above the model's context is a :class:`UserError` (:func:`econlm.config.check_context`)."""
    check_context(max_length, model.config)
    stride = stride or max_length // 2
    windows = sliding_windows(len(ids), max_length, stride)
    if not windows:
        raise UserError("the text has fewer than two tokens; nothing to score")
    device = next(model.parameters()).device
    ids_tensor = torch.tensor(ids, dtype=torch.long)
    total_nll = 0.0
    scored = 0
    for group in _window_batches(windows, batch_size):
        inputs = torch.stack([ids_tensor[w.start : w.end] for w in group]).to(device)  # (B, T)
        batch = {"input_ids": inputs, "attention_mask": torch.ones_like(inputs)}
        if on_inputs:
            on_inputs(batch)
        logits = model(**batch).logits  # (B, T, V)
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts tokens 1..T-1
        targets = inputs[:, 1:]
        token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        for row, w in enumerate(group):
            first = w.score_from - w.start - 1  # position in token_nll of the first scored token
            total_nll += float(token_nll[row, first:].double().sum())
            scored += w.end - w.score_from
        if on_batch:
            on_batch()
    ppl = metrics.perplexity(total_nll, scored)
    details = {
        "method": "perplexity",
        "max_length": max_length,
        "stride": stride,
        "windows": len(windows),
        "tokens_in_text": len(ids),
        "scored_tokens": scored,
        "mean_nll_nats": total_nll / scored,
    }
    return Score("perplexity", ppl, {"perplexity": ppl}, scored, details)


def lm_batches(n_tokens: int, max_length: int, stride: int | None, batch_size: int) -> int:
    windows = sliding_windows(n_tokens, max_length, stride or max_length // 2)
    return len(_window_batches(windows, batch_size))


def _window_batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Group windows of equal length, so batches need no padding."""
    by_length: dict[int, list[Window]] = {}
    for w in windows:
        by_length.setdefault(w.end - w.start, []).append(w)
    return [group[i : i + batch_size] for group in by_length.values() for i in range(0, len(group), batch_size)]
