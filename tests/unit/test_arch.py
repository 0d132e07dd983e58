"""Weight orientation: nn.Linear (out, in) and GPT-2's Conv1D (in, out) read the same through arch."""

import pytest
import torch

from econlm import arch
from tests.conftest import tiny_model


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_out_rows_and_in_columns_describe_what_the_layer_computes(family):
    model = tiny_model(family)
    fam = arch.family(model.config)
    for path in (fam.q, fam.o, fam.ffn_up, fam.ffn_down):
        layer = arch.blocks(model)[0].get_submodule(path)
        x = torch.randn(3, arch.in_features(layer))
        bias = layer.bias if layer.bias is not None else 0
        with torch.no_grad():
            torch.testing.assert_close(x @ arch.out_rows(layer).T + bias, layer(x))
            torch.testing.assert_close(x @ arch.in_columns(layer) + bias, layer(x))
        assert arch.out_rows(layer).shape == (arch.out_features(layer), arch.in_features(layer))
        new = arch.resized(layer, 5, 7)
        assert type(new) is type(layer) and (arch.in_features(new), arch.out_features(new)) == (5, 7)
        assert new(torch.randn(2, 5)).shape == (2, 7)
