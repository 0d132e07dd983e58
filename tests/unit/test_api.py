"""The package's public names: lazy, stable, and never shadowed by a submodule."""

import subprocess
import sys


def test_econlm_train_stays_the_function_whatever_is_imported_first():
    # Importing the training module (as the CLI and sweeps do) used to rebind econlm.train to the module.
    code = (
        "import econlm, econlm.training, econlm.compact, econlm.probing\n"
        "from econlm.training import TrainConfig\n"
        "assert callable(econlm.train) and econlm.train.__module__ == 'econlm.training', econlm.train\n"
        "assert econlm.run_compact.__module__ == 'econlm.compact'\n"
        "import econlm\n"
        "assert callable(econlm.train)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_export_shares_a_name_with_a_submodule():
    import pkgutil

    import econlm

    modules = {m.name for m in pkgutil.iter_modules(econlm.__path__)}
    assert not modules & set(econlm._EXPORTS), "an export named like a submodule is rebound by its import"


def test_dir_lists_the_lazy_exports_and_each_resolves():
    import econlm

    listed = dir(econlm)
    for name in econlm._EXPORTS:
        assert name in listed
        assert getattr(econlm, name) is not None


def test_importing_econlm_does_not_import_torch():
    code = "import sys, econlm; econlm.__version__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
