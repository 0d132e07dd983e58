"""Pure metric functions: attention inequality (Gini, entropy), sparsity, and the official task metrics.

Nothing here reads files or prints. Tensor functions work along the last dimension; the task metrics take
sequences of numbers and return Python floats.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------------
# Inequality of a distribution


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values along the last dimension.

    0 means every entry is equal, (n-1)/n means one entry holds everything (``gini([0,0,0,1]) == 0.75``).
    Empty and all-zero inputs give 0: there is no inequality in nothing.
    """
    n = x.shape[-1]
    if n == 0:
        return torch.zeros(x.shape[:-1], dtype=torch.float32)
    sorted_x = sort_last(x.float())
    rank = torch.arange(1, n + 1, dtype=torch.float32, device=x.device)
    total = sorted_x.sum(-1)
    weighted = ((2 * rank - n - 1) * sorted_x).sum(-1)
    return torch.where(total > 0, weighted / (n * total.clamp_min(1e-30)), torch.zeros_like(total))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last dimension; the input is normalized to sum to one first.

    ``entropy(uniform(n)) == log(n)``; a one-hot row has entropy 0; empty and all-zero inputs give 0.
    """
    p = p.float()
    total = p.sum(-1, keepdim=True)
    q = torch.where(total > 0, p / total.clamp_min(1e-30), torch.zeros_like(p))
    return -torch.special.xlogy(q, q).sum(-1)


def masked_row_gini_entropy(
    probs: torch.Tensor, allowed: torch.Tensor | None, *, counts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gini and entropy of each attention row, over the allowed keys of that row only.

    Rows may have different numbers of allowed keys (padding, causal masks), so this is the vectorised
    form of :func:`gini` / :func:`entropy` applied to ``row[allowed_row]``. Keys that are allowed but
    received zero probability (dropped by a budget) count as zeros, which is what makes Gini rise under
    a budget.

    Args:
        probs: non-negative attention probabilities, shape ``(..., K)``, exactly zero at disallowed keys
            (what a softmax over masked scores gives). Rows with no allowed key may hold anything: their
            results are meaningless and finite, and callers leave them out.
        allowed: boolean, broadcastable to ``probs``; True where the masks let the query see the key;
            None when every key is allowed.
        counts: optional ``allowed.sum(-1)``, broadcastable to ``probs.shape[:-1]``, when the caller has it.

    Returns:
        ``(gini, entropy)``, each of shape ``probs.shape[:-1]``.
    """
    key_len = probs.shape[-1]
    if counts is not None:
        n = counts.float().expand(probs.shape[:-1])
    elif allowed is None:
        n = torch.full(probs.shape[:-1], float(key_len), device=probs.device)
    else:
        n = allowed.sum(-1).float().expand(probs.shape[:-1])
    # A sorted copy in a reused buffer. After sorting, every positive entry sits among the last n
    # positions (at least K - n zeros precede it), so an entry at position i has rank i - (K - n) + 1
    # among the allowed keys, and the Gini sum sum((2 * rank - n - 1) * x) equals
    # 2 * sum(i * x) + (n + 1 - 2K) * sum(x); zeros add nothing. Entropy ignores the order.
    ordered = _sorted_scratch(probs)  # (..., K), sorted into a reused buffer
    position = torch.arange(key_len, dtype=ordered.dtype, device=ordered.device)
    position_sum = ordered @ position  # (...,)
    total = ordered.sum(-1)
    gini_rows = (2 * position_sum + (n + 1 - 2 * key_len) * total) / (n * total).clamp_min(1e-30)
    # p * log(p), with 0 * log(tiny) = 0 for the zeros, computed in place in a second reused buffer
    # (linalg.vecdot would allocate a full-size product).
    p_log_p = _scratch("log", ordered.shape, ordered.dtype, ordered.device)
    torch.clamp_min(ordered, 1e-30, out=p_log_p).log_().mul_(ordered)
    entropy_rows = -p_log_p.sum(-1)
    return gini_rows, entropy_rows


# Attention statistics run on every layer of every batch. Fresh multi-megabyte buffers cost page faults
# on each call (more than the arithmetic), so the sorted copy and the log live in per-thread buffers that
# are reused while the shapes allow; NumPy's sort runs on row blocks in parallel (it releases the GIL).
_LOCAL = threading.local()
_POOL: ThreadPoolExecutor | None = None
_PARALLEL_SORT_MIN = 1 << 16  # elements; below this threads cost more than they save


def _scratch(name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A per-thread buffer of ``shape``, reused across calls (contents undefined)."""
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = {}
    numel = math.prod(shape)
    held = buffers.get(name)
    if held is None or held.dtype != dtype or held.device != device or held.numel() < numel:
        held = buffers[name] = torch.empty(numel, dtype=dtype, device=device)
    return held[:numel].view(shape)


def release_scratch() -> None:
    """Free this thread's statistics buffers (they are kept between calls for speed)."""
    _LOCAL.buffers = {}


def _sort_rows_inplace(array: np.ndarray) -> None:
    global _POOL
    rows = array.reshape(-1, array.shape[-1])
    workers = max(1, torch.get_num_threads())
    if workers == 1 or array.size < _PARALLEL_SORT_MIN:
        rows.sort(axis=-1)
        return
    if _POOL is None or _POOL._max_workers != workers:  # noqa: SLF001 - resize when torch's threads change
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="econlm-sort")
    step = -(-rows.shape[0] // workers)
    blocks = [rows[start : start + step] for start in range(0, rows.shape[0], step)]
    for done in _POOL.map(lambda block: block.sort(axis=-1), blocks):
        del done


def _sorted_scratch(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32/64, sorted ascending along the last dimension, in a reused per-thread buffer."""
    x = x.detach()
    if x.device.type != "cpu":
        return x.float().sort(dim=-1).values
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    buffer = _scratch("sorted", x.shape, dtype, x.device)
    buffer.copy_(x)
    _sort_rows_inplace(buffer.numpy())
    return buffer


def sort_last(x: torch.Tensor) -> torch.Tensor:
    """A sorted copy (ascending along the last dimension) of ``x``; no indices, no gradient.

    On the CPU NumPy's SIMD quicksort is about 25x faster than ``torch.sort`` for attention-sized rows,
    which is what keeps the probe's statistics cheap; elsewhere ``torch.sort`` is used.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        t = x.detach()
        array = t.numpy().copy() if t.is_contiguous() else t.contiguous().numpy()  # one private copy
        _sort_rows_inplace(array)
        return torch.from_numpy(array)
    return x.detach().sort(dim=-1).values


def sparsity(x: torch.Tensor, eps: float) -> float:
    """Share of entries with ``|x| <= eps``."""
    if x.numel() == 0:
        return 0.0
    return float((x.abs() <= eps).float().mean())


# ---------------------------------------------------------------------------------------------------------
# Task metrics (GLUE definitions)


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to the label."""
    _check_same_length(predictions, labels)
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_binary(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are no true and no predicted positives (as scikit-learn)."""
    _check_same_length(predictions, labels)
    pred = np.asarray(predictions) == positive
    gold = np.asarray(labels) == positive
    tp = float(np.sum(pred & gold))
    denominator = float(np.sum(pred) + np.sum(gold))
    return 2 * tp / denominator if denominator else 0.0


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation for binary labels; 0 when any marginal is empty (as scikit-learn)."""
    _check_same_length(predictions, labels)
    pred = np.asarray(predictions) == 1
    gold = np.asarray(labels) == 1
    tp = float(np.sum(pred & gold))
    tn = float(np.sum(~pred & ~gold))
    fp = float(np.sum(pred & ~gold))
    fn = float(np.sum(~pred & gold))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either input is constant."""
    _check_same_length(x, y)
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denominator) if denominator else float("nan")


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks starting at 1, ties sharing the mean of their ranks (as ``scipy.stats.rankdata``)."""
    values = np.asarray(x, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks."""
    _check_same_length(x, y)
    return pearson(average_ranks(x), average_ranks(y))


def perplexity(total_nll: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per scored token)."""
    if tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / tokens)


def _check_same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} predictions, {len(b)} labels")
