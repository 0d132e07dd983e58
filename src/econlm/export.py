"""ONNX export and ONNX Runtime timing: do the speedups survive outside PyTorch eager?

:func:`export_onnx` writes a dense or compacted model as one ONNX graph whose batch and sequence axes are
dynamic, then runs it in ONNX Runtime on two batches of shapes other than the one it was traced with and
reports the largest difference from PyTorch. :func:`onnx_session` and :func:`onnx_forward` give the CPU
session and call that compaction times next to PyTorch.

onnx, onnxscript and onnxruntime are the optional ``onnx`` extra (``pip install econlm[onnx]``; ``make``
installs it). Without them, exporting is a user error that says what to install.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from econlm.errors import UserError
from econlm.progress import quiet_exporter

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "output"
DEFAULT_OPSET = 18
# Text the check runs on: batches of 1 and 3 (the trace used 2), the second with padding; a size-1 batch
# catches an exporter that specialised the batch axis.
CHECK_TEXTS = (
    ["Prices rise when compute is scarce and demand does not fall."],
    ["Heads compete.", "Neurons that never fire cost nothing to remove.", "Attention is a budget."],
)


@dataclass(frozen=True)
class ExportReport:
    """What was exported and how closely ONNX Runtime reproduces PyTorch."""

    path: str
    output: str  # logits or last_hidden_state
    inputs: tuple[str, ...]
    dynamic_axes: dict
    opset: int
    size_bytes: int
    checked_shapes: tuple[tuple[int, int], ...]  # (batch, sequence) of the batches compared
    max_abs_difference: float
    tolerance: float

    @property
    def matches(self) -> bool:
        return self.max_abs_difference <= self.tolerance

    def to_json(self) -> dict:
        return asdict(self)


def require_onnx() -> None:
    """One line saying what to install when the optional ONNX packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise UserError(
            f"ONNX export needs {', '.join(missing)}: pip install 'econlm[onnx]' (make demo / make test install it)"
        )


def check_onnx_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"the ONNX output {path} should end in .onnx")
    return path


def onnx_available() -> bool:
    return all(_importable(name) for name in ("onnx", "onnxscript", "onnxruntime"))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class _SingleOutput(nn.Module):
    """The model with named tensor inputs and one tensor output, which is what an exporter traces cleanly."""

    def __init__(self, model: nn.Module, inputs: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.output = ""  # logits or last_hidden_state: what forward returned

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.inputs, tensors))
        if "use_cache" in inspect.signature(self.model.forward).parameters:
            kwargs["use_cache"] = False  # one full forward pass; the KV cache is a generation concern
        out = self.model(**kwargs)
        self.output = "logits" if hasattr(out, "logits") else "last_hidden_state"
        return getattr(out, self.output)


def model_inputs(model: nn.Module, tokenizer) -> tuple[str, ...]:
    """The inputs both the tokenizer produces and the model's forward accepts, in a fixed order."""
    accepted = inspect.signature(model.forward).parameters
    produced = set(tokenizer("probe", return_tensors="pt").keys())
    return tuple(name for name in INPUT_NAMES if name in accepted and name in produced)


def _encode(tokenizer, texts: list[str], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if tokenizer.pad_token is None:  # decoders often have none; any id works under a zero attention mask
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return {name: encoded[name] for name in names}


def export_onnx(
    model: nn.Module,
    tokenizer,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export ``model`` (in eval mode, float32) to ``path`` with dynamic batch and sequence axes, verify it in
    ONNX Runtime against PyTorch on two batches of other shapes, and return the report.

    The file is written atomically; nothing is left at ``path`` when the export or the check raises. A
    difference above ``tolerance`` does not raise: the file is written and ``report.matches`` is False.
    """
    require_onnx()
    path = check_onnx_path(path)
    import copy

    from econlm.tokens import attached_rule

    rule = attached_rule(model)
    if rule is not None:
        raise UserError(
            f"this model drops tokens by {rule.source}: each layer's selection of tokens is not expressed in one "
            "ONNX graph yet; export a model without a token rule (detach it: econlm.tokens.attached_rule(model).detach())"
        )
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model keeps its device, dtype and mode
    if tokenizer.pad_token is None:
        tokenizer = copy.deepcopy(tokenizer)
    names = model_inputs(model, tokenizer)
    wrapper = _SingleOutput(model, names).eval()
    example = _encode(tokenizer, ["Tracing batch one.", "Tracing batch two, a little longer."], names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {"tensors": tuple({0: batch, 1: sequence} for _ in names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), quiet_exporter():
            torch.onnx.export(
                wrapper,
                tuple(example[n] for n in names),
                tmp,
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic,
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )
        shapes, difference = _check(tmp, wrapper, tokenizer, names)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportReport(
        path=str(path),
        output=wrapper.output,
        inputs=names,
        dynamic_axes={name: {"0": "batch", "1": "sequence"} for name in names},
        opset=opset,
        size_bytes=path.stat().st_size,
        checked_shapes=shapes,
        max_abs_difference=difference,
        tolerance=tolerance,
    )


def _check(onnx_path: str, wrapper: nn.Module, tokenizer, names) -> tuple[tuple[tuple[int, int], ...], float]:
    """Largest |ONNX Runtime - PyTorch| over real (unpadded) positions of the check batches."""
    session = onnx_session(onnx_path)
    shapes, worst = [], 0.0
    for texts in CHECK_TEXTS:
        inputs = _encode(tokenizer, texts, names)
        with torch.no_grad():
            expected = wrapper(*(inputs[n] for n in names))
        got = torch.from_numpy(onnx_forward(session, inputs))
        if got.dim() == 3 and "attention_mask" in inputs:  # padded positions hold no meaning in either runtime
            real = inputs["attention_mask"].bool()
            got, expected = got[real], expected[real]
        worst = max(worst, float((got - expected).abs().max()))
        shapes.append(tuple(inputs[names[0]].shape))
    return tuple(shapes), worst


def onnx_session(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session using as many intra-op threads as torch does, so timings compare."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ONNX Runtime's threads spin after each run, waiting for more work; timed next to PyTorch on the same
    # cores, the spinning would steal PyTorch's time. Idle threads sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_forward(session, inputs: dict[str, torch.Tensor]):
    """One forward pass in ONNX Runtime; int64 numpy inputs, the single output as a numpy array."""
    feeds = {i.name: inputs[i.name].to(torch.int64).numpy() for i in session.get_inputs()}
    return session.run(None, feeds)[0]
