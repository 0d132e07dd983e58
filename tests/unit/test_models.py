"""Model specs that are hub ids: what is asked of the hub, and the one-line error when it cannot answer."""

import pytest
import transformers

from econlm import models
from econlm.errors import UserError


def test_hub_id_goes_to_from_pretrained_unchanged(monkeypatch):
    asked = []

    def fake_config(name, **kwargs):
        asked.append(name)
        return transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    config, resolved = models.load_config("google-bert/bert-base-uncased")
    assert asked == ["google-bert/bert-base-uncased"] and not resolved.is_local
    assert config.hidden_size == 32


def test_hub_id_without_network_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as caught:
        models.load_config("no-such-org/no-such-model")
    message = str(caught.value)
    assert "\n" not in message and "no-such-org/no-such-model" in message and "hub did not provide it" in message


def test_a_fine_tune_of_another_task_gets_a_new_head_and_bad_shapes_are_one_line(tmp_path):
    """Training an SST-2 fine-tune (2 labels) on STS-B (1) asks for a new head: the rest of the weights load,
    the head is new. A checkpoint whose weights do not fit its own config.json is one line saying so."""
    import json

    import torch

    from econlm.models import load_model
    from tests.conftest import save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / "sst2", head="seq-cls", num_labels=2)
    two = load_model(str(path))
    one = load_model(str(path), "seq-cls", num_labels=1)
    assert one.model.config.num_labels == 1 and one.model.classifier.out_features == 1
    embeddings = two.model.bert.embeddings.word_embeddings.weight
    assert torch.equal(one.model.bert.embeddings.word_embeddings.weight, embeddings)  # the body is the checkpoint's
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] + 8}))
    with pytest.raises(UserError, match=r"do not have the shapes its config.json gives; re-save it") as error:
        load_model(str(path))
    assert "\n" not in str(error.value)
