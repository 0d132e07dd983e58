"""Scoring: sliding-window perplexity and GLUE scoring paths, checked against direct computations."""

import math

import pytest
import torch

from econlm import evaluate
from econlm.data import Example, get_task
from econlm.errors import UserError
from tests.conftest import tiny_model


@pytest.mark.parametrize("n, max_length, stride", [(10, 4, 3), (100, 16, 8), (7, 64, 32), (50, 8, 1)])
def test_sliding_windows_score_every_token_once(n, max_length, stride):
    windows = evaluate.sliding_windows(n, max_length, stride)
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert scored == list(range(1, n))
    for w in windows:
        assert w.end - w.start <= max_length and w.start < w.score_from


def test_stride_must_leave_context():
    with pytest.raises(UserError):
        evaluate.sliding_windows(10, 4, 4)


def test_perplexity_of_a_short_text_equals_the_models_own_loss():
    model = tiny_model("gpt2", head="causal-lm")
    ids = torch.randint(0, 120, (40,)).tolist()
    score = evaluate.score_lm(model, ids, max_length=64)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert score.examples == 39 and score.details["scored_tokens"] == 39
    assert score.value == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_windowed_perplexity_matches_per_token_reference():
    model = tiny_model("llama", head="causal-lm")
    ids = torch.randint(0, 120, (30,)).tolist()
    score = evaluate.score_lm(model, ids, max_length=8, stride=3, batch_size=3)
    # reference: each token t predicted from ids[max(0, end - 8): t] of the window that scores it
    total = 0.0
    for w in evaluate.sliding_windows(30, 8, 3):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[w.start : w.end]])).logits[0]
        for t in range(w.score_from, w.end):
            total -= float(torch.log_softmax(logits[t - w.start - 1], -1)[ids[t]])
    assert score.value == pytest.approx(math.exp(total / 29), rel=1e-5)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from econlm.models import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm").location)


EXAMPLES = [Example(f"sentence number {i} " * (1 + i % 4), f"other {i}", i % 2) for i in range(13)]


def test_classification_head_scoring_matches_one_by_one(minilm_tokenizer):
    model = tiny_model("bert", head="seq-cls", vocab_size=30522, num_labels=2)
    task = get_task("mrpc")
    batched = evaluate.score_glue(model, minilm_tokenizer, task, EXAMPLES, "seq-cls", batch_size=4)
    predictions = []
    for e in EXAMPLES:
        with torch.no_grad():
            logits = model(**minilm_tokenizer(e.text_a, e.text_b, return_tensors="pt")).logits
        predictions.append(int(logits.argmax()))
    assert batched.metrics == evaluate.task_metrics(task, predictions, [e.label for e in EXAMPLES])
    assert batched.metric == "f1" and set(batched.metrics) == {"f1", "accuracy"}


def test_cosine_scoring_matches_direct_embeddings(minilm_tokenizer):
    model = tiny_model("bert", vocab_size=30522)
    task = get_task("stsb")
    examples = [Example(e.text_a, e.text_b, float(i % 5)) for i, e in enumerate(EXAMPLES)]
    score = evaluate.score_glue(model, minilm_tokenizer, task, examples, "base", batch_size=5)

    def embed(text):
        with torch.no_grad():
            return model(**minilm_tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0)

    cosines = [float(torch.cosine_similarity(embed(e.text_a), embed(e.text_b), dim=0)) for e in examples]
    expected = evaluate.task_metrics(task, cosines, [e.label for e in examples])
    assert score.value == pytest.approx(expected["spearman"], abs=1e-6)
    assert score.metrics["pearson"] == pytest.approx(expected["pearson"], abs=1e-5)


def test_scoring_method_errors():
    with pytest.raises(UserError, match="causal LM head"):
        evaluate.scoring_method(get_task("wikitext2"), "base")
    with pytest.raises(UserError, match="no classification head for sst2"):
        evaluate.scoring_method(get_task("sst2"), "base")
    assert evaluate.scoring_method(get_task("stsb"), "seq-cls") == "regression-head"
