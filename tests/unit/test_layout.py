"""The module graph a maintainer can rely on: surgery is a leaf, models does not need the compaction command,
and name lookups share one registry error."""

import subprocess
import sys

import pytest

from econlm.errors import UserError
from econlm.registry import Registry


def _imported_after(statement: str) -> set[str]:
    """econlm modules loaded by ``statement`` in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('econlm')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_surgery_imports_neither_models_nor_compact():
    loaded = _imported_after("import econlm.surgery")
    assert "econlm.surgery" in loaded
    assert not loaded & {"econlm.models", "econlm.compact"}


def test_models_does_not_import_compact():
    loaded = _imported_after("import econlm.models; import econlm.prune")
    assert "econlm.compact" not in loaded


def test_reading_a_users_files_does_not_need_the_task_registry():
    # userdata sits below data: data turns what userdata read into a task, never the other way round.
    loaded = _imported_after("import econlm.userdata")
    assert "econlm.data" not in loaded


def test_compact_still_exports_the_surgery_names():
    from econlm import compact, surgery

    for name in ("apply_plan", "save_model", "is_compacted", "load_compacted", "LayerPlan", "STRUCTURE_FILE"):
        assert getattr(compact, name) is getattr(surgery, name)


def test_unknown_names_share_one_error():
    colours = Registry("colour", {"red": 1, "green": 2})
    assert colours["red"] == 1 and "green" in colours and list(colours) == ["red", "green"] and len(colours) == 2
    with pytest.raises(UserError, match=r"^unknown colour 'Gren'; valid: green, red\. Did you mean 'green'\?$"):
        colours["Gren"]


@pytest.mark.parametrize(
    ("module", "registry", "name", "start"),
    [
        ("econlm.data", "TASKS", "sst", "unknown task 'sst'; valid: cola, "),
        ("econlm.cost", "COSTS", "flop", "unknown cost 'flop'; valid: attn_entropy, "),
        ("econlm.prune", "IMPORTANCE", "magnitud", "unknown importance 'magnitud'; valid: activation, fisher, magnitude, wanda."),
        ("econlm.models", "ALIASES", "MiniLM", "unknown model alias 'MiniLM'; valid: minilm, smollm2."),
        ("econlm.arch", "FAMILIES", "bret", "unknown model type 'bret'; valid: bert, distilbert, "),
    ],
)
def test_every_registry_says_did_you_mean(module, registry, name, start):
    import importlib

    with pytest.raises(UserError) as info:
        getattr(importlib.import_module(module), registry)[name]
    message = str(info.value)
    assert message.startswith(start) and "Did you mean" in message and "\n" not in message


def test_cli_help_lists_the_registered_names_and_parsing_imports_no_torch():
    from econlm.cost import COSTS
    from econlm.data import TASKS

    code = "import sys; from econlm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    help_text = subprocess.run(
        [sys.executable, "-m", "econlm", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(help_text.split())
    assert ", ".join(COSTS) in flat and ", ".join(TASKS) in flat and "minilm, smollm2" in flat
    assert not any(placeholder in flat for placeholder in ("{tasks}", "{costs}", "{aliases}"))
