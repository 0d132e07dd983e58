"""Shared test helpers: offline settings, tiny random-init models of every supported family, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: hub look-ups fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ECONLM_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ["bert", "roberta", "distilbert", "electra", "gpt2", "llama", "qwen2", "mistral"]
DECODERS = {"gpt2", "llama", "qwen2", "mistral"}


def tiny_config(family: str, **overrides):
    """A 2-layer, 32-dim random config of ``family``; Llama-likes use grouped-query attention (4 heads, 2 KV)."""
    import transformers as tf

    common = dict(vocab_size=120, max_position_embeddings=96)
    if family in ("bert", "roberta", "electra"):
        cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "electra": tf.ElectraConfig}[family]
        kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)
        if family == "electra":
            kwargs["embedding_size"] = 32
        if family == "roberta":
            kwargs["pad_token_id"] = 1
    elif family == "distilbert":
        cls = tf.DistilBertConfig
        kwargs = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    elif family == "gpt2":
        cls = tf.GPT2Config
        kwargs = dict(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=96,
            vocab_size=120,
            n_inner=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    else:
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
        kwargs = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
            **common,
        )
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_model(family: str, head: str = "base", seed: int = 0, **overrides):
    """A random-init model of ``family`` in eval mode with eager attention. head: base, causal-lm or seq-cls."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    auto = {
        "base": tf.AutoModel,
        "causal-lm": tf.AutoModelForCausalLM,
        "seq-cls": tf.AutoModelForSequenceClassification,
    }[head]
    model = auto.from_config(config, attn_implementation="eager")
    return model.eval()


def padded_batch(family: str, lengths=(11, 7, 3), padding_side: str = "right", seed: int = 1):
    """input_ids and attention_mask with rows of the given real lengths, padded on one side."""
    import torch

    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, 100, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if padding_side == "right":
            mask[row, :n] = 1
        else:
            mask[row, width - n :] = 1
    ids = ids.masked_fill(mask == 0, 0 if family not in ("roberta",) else 1)
    return {"input_ids": ids, "attention_mask": mask}


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir() -> Path | None:
    """The real data folder ($ECONLM_DATA, else ../shared/data), or None when it is absent."""
    env = os.environ.get("ECONLM_DATA")
    for candidate in (Path(env) if env else None, SHARED_DATA):
        if candidate is not None and (candidate / "glue").is_dir():
            return candidate
    return None


@pytest.fixture
def real_data() -> Path:
    found = data_dir()
    if found is None:
        pytest.skip("no real data: set ECONLM_DATA to a folder laid out like ../shared/data")
    return found


def save_tiny_checkpoint(path: Path, family: str = "bert", head: str = "base", **overrides) -> Path:
    """A tiny random model saved with the real MiniLM tokenizer (vocab 30522), for end-to-end runs."""
    from transformers import AutoTokenizer

    from econlm.models import resolve

    model = tiny_model(family, head=head, vocab_size=30522, **overrides)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve("minilm").location).save_pretrained(path)
    return path


def write_tiny_glue(root: Path, n_train: int = 48, n_dev: int = 24) -> Path:
    """A small SST-2 and STS-B in GLUE layout whose labels follow a learnable rule (word 'good' or 'bad')."""
    import random

    rng = random.Random(0)
    words = "the a film movie plot actor scene story music very quite".split()

    def sentence(label):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        return f"{body} {'good' if label else 'bad'} {rng.choice(words)}"

    for split, n in (("train", n_train), ("dev", n_dev)):
        sst = ["sentence\tlabel"] + [f"{sentence(i % 2)}\t{i % 2}" for i in range(n)]
        (root / "SST-2").mkdir(parents=True, exist_ok=True)
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(sst) + "\n")
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        rows = [header] + [
            f"{i}\tg\tf\ty\t0\tn\tn\t{sentence(i % 2)}\t{sentence((i // 2) % 2)}\t{(i % 5) * 1.0}" for i in range(n)
        ]
        (root / "STS-B").mkdir(parents=True, exist_ok=True)
        (root / "STS-B" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    text = " ".join(sentence(i % 2) + " ." for i in range(400))
    (root / "wikitext-2").mkdir(parents=True, exist_ok=True)
    (root / "wikitext-2" / "valid.txt").write_text(text)
    (root / "wikitext-2" / "test.txt").write_text(text[::-1])
    return root


def latency_table_for(config, dense_seconds: float = 0.01, seq_len: int = 16):
    """A made-up latency table that fits ``config``'s shape: savings linear in the units removed."""
    from econlm.latency_table import Curve, LatencyTable, model_shape

    shape = model_shape(config)
    groups = list(range(1, shape["kv_heads"] + 1))
    widths = [shape["intermediate"] * i // 4 for i in range(1, 5)]

    def curve(kept, dense, per_unit):
        saved = tuple(per_unit * (dense - k) for k in kept)
        return Curve(tuple(kept), saved, saved)

    layer_share = dense_seconds / (2 * shape["layers"])  # half the time in attention, half in FFNs
    return LatencyTable(
        model={"name": "made up", **shape},
        setup={"batch": 1, "seq_len": seq_len, "threads": 1},
        machine={},
        dense_seconds=dense_seconds,
        attention=curve(groups, shape["kv_heads"], layer_share / shape["kv_heads"]),
        ffn=curve(widths, shape["intermediate"], layer_share / shape["intermediate"]),
        group=shape["heads"] // shape["kv_heads"],
    )
