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
