"""Tasks and their data: GLUE and WikiText, from a local folder first, else the Hugging Face hub.

The local folder (``--data-dir`` or ``$ECONLM_DATA``) is laid out like GLUE's original release::

    glue/SST-2/{train,dev}.tsv   glue/STS-B/...   glue/CoLA/... (no header)   glue/MRPC/... (UTF-8 BOM)
    glue/RTE/... (Hugging Face columns or GLUE's)  glue/QNLI/...  glue/MNLI/dev_matched.tsv  glue/QQP/...
    wikitext-103/wiki.{valid,test,train}.tokens    wikitext-2/{valid,test,train}.txt

(a ``glue/`` level is optional). TSVs are read with quoting off: sentences contain quote characters.
Files missing locally are fetched with ``datasets`` (``nyu-mll/glue``, ``Salesforce/wikitext``); when
that is impossible too, the error names every path tried and how to get the data.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from econlm.errors import UserError, unknown_name
from econlm.registry import Registry


@dataclass(frozen=True)
class Example:
    """One GLUE example: one or two texts and a label (int class, or float score for STS-B)."""

    text_a: str
    text_b: str | None
    label: float | int


@dataclass(frozen=True)
class Task:
    """A task's data and its official metrics (the first metric is the headline score)."""

    name: str
    kind: str  # "classification", "regression" or "lm"
    metrics: tuple[str, ...]
    num_labels: int = 0
    hub_dataset: tuple[str, str] = ("", "")
    hub_splits: dict[str, str] = field(default_factory=dict)
    hub_columns: tuple[str, ...] = ()  # text columns, then the label column
    local_folder: str = ""
    local_files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> candidate names
    local_columns: tuple[str, ...] = ()  # header names (texts, then label); ints for header-less files
    label_names: tuple[str, ...] = ()  # string labels in local files, in class order
    score_range: tuple[float, float] | None = None  # regression: the scores a local file may hold
    user: object = field(default=None, compare=False, repr=False)  # econlm.userdata.UserData of a user's files

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "perplexity"

    @property
    def is_lm(self) -> bool:
        return self.kind == "lm"


_GLUE_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def _glue(
    name, folder, kind, metrics, num_labels, hub_columns, local_columns, label_names=(), files=None, score_range=None
):
    return Task(
        name=name,
        kind=kind,
        metrics=metrics,
        num_labels=num_labels,
        hub_dataset=("nyu-mll/glue", name),
        hub_splits=dict(_GLUE_SPLITS),
        hub_columns=hub_columns,
        local_folder=folder,
        local_files=files or {"train": ("train.tsv",), "dev": ("dev.tsv",), "test": ("test.tsv",)},
        local_columns=local_columns,
        label_names=label_names,
        score_range=score_range,
    )


_NLI = ("entailment", "not_entailment")
TASKS: Registry[Task] = Registry(
    "task",
    {
        t.name: t
        for t in [
            _glue("sst2", "SST-2", "classification", ("accuracy",), 2, ("sentence", "label"), ("sentence", "label")),
            _glue(
                "stsb",
                "STS-B",
                "regression",
                ("spearman", "pearson"),
                1,
                ("sentence1", "sentence2", "label"),
                ("sentence1", "sentence2", "score"),
                score_range=(0.0, 5.0),
            ),
            # CoLA's files have no header: source, label, original label, sentence.
            _glue("cola", "CoLA", "classification", ("mcc",), 2, ("sentence", "label"), ("3", "1")),
            _glue(
                "mrpc",
                "MRPC",
                "classification",
                ("f1", "accuracy"),
                2,
                ("sentence1", "sentence2", "label"),
                ("#1 String", "#2 String", "Quality"),
            ),
            _glue(
                "rte",
                "RTE",
                "classification",
                ("accuracy",),
                2,
                ("sentence1", "sentence2", "label"),
                ("sentence1", "sentence2", "label"),
                _NLI,
            ),
            _glue(
                "qnli",
                "QNLI",
                "classification",
                ("accuracy",),
                2,
                ("question", "sentence", "label"),
                ("question", "sentence", "label"),
                _NLI,
            ),
            _glue(
                "mnli",
                "MNLI",
                "classification",
                ("accuracy",),
                3,
                ("premise", "hypothesis", "label"),
                ("sentence1", "sentence2", "gold_label"),
                ("entailment", "neutral", "contradiction"),
                files={"train": ("train.tsv",), "dev": ("dev_matched.tsv",), "test": ("test_matched.tsv",)},
            ),
            _glue(
                "qqp",
                "QQP",
                "classification",
                ("f1", "accuracy"),
                2,
                ("question1", "question2", "label"),
                ("question1", "question2", "is_duplicate"),
            ),
            Task(
                name="wikitext103",
                kind="lm",
                metrics=("perplexity",),
                hub_dataset=("Salesforce/wikitext", "wikitext-103-v1"),
                hub_splits=dict(_GLUE_SPLITS),
                local_folder="wikitext-103",
                local_files={
                    "train": ("wiki.train.tokens", "train.txt"),
                    "dev": ("wiki.valid.tokens", "valid.txt"),
                    "test": ("wiki.test.tokens", "test.txt"),
                },
            ),
            Task(
                name="wikitext2",
                kind="lm",
                metrics=("perplexity",),
                hub_dataset=("Salesforce/wikitext", "wikitext-2-v1"),
                hub_splits=dict(_GLUE_SPLITS),
                local_folder="wikitext-2",
                local_files={
                    "train": ("train.txt", "wiki.train.tokens"),
                    "dev": ("valid.txt", "wiki.valid.tokens"),
                    "test": ("test.txt", "wiki.test.tokens"),
                },
            ),
        ]
    },
)
# MNLI also has a mismatched dev set.
TASKS["mnli"].local_files["dev_mismatched"] = ("dev_mismatched.tsv",)
TASKS["mnli"].hub_splits.update({"dev": "validation_matched", "dev_mismatched": "validation_mismatched"})
TASKS["mnli"].hub_splits["test"] = "test_matched"


_USER_TASKS: dict = {}  # user tasks read so far: by (path, spec, file stamps), and by path for the latest


def get_task(name: str, spec=None) -> Task:
    """Look a task up by name, or read a user's data file (``spec``: an :class:`econlm.userdata.DataSpec`);
    unknown names list the valid ones and suggest the closest."""
    from econlm import userdata

    if name in TASKS and spec in (None, userdata.DataSpec()):
        return TASKS[name]
    if name not in TASKS and userdata.looks_like_path(name):
        if spec is None and name in _USER_TASKS:
            return _USER_TASKS[name]
        spec = spec or userdata.DataSpec()
        key = (name, spec, _stamps(name, spec))  # an edited file is read again
        if key not in _USER_TASKS:
            _USER_TASKS[key] = user_task(name, spec)
        _USER_TASKS[name] = _USER_TASKS[key]
        return _USER_TASKS[name]
    if name in TASKS:
        raise UserError(
            f"--text-columns, --label-column, --task-type, --metric, --train and --dev are for your own data; "
            f"{name} is a built-in task"
        )
    return TASKS[name]  # the registry's one-line error with a suggestion


def user_task(name: str, spec) -> Task:
    """The task of a user's data file, read and checked now (see :mod:`econlm.userdata`)."""
    from econlm import userdata

    data = userdata.read(name, spec)
    return Task(
        name=name,
        kind=data.kind,
        metrics=data.metrics,
        num_labels=data.num_labels,
        label_names=data.label_names,
        user=data,
    )


def _stamps(name: str, spec) -> tuple:
    paths = [Path(p) for p in (name, spec.train, spec.dev) if p]
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else (str(p),) for p in paths)


def normalise_data_fields(config) -> None:
    """For a frozen config with ``task`` and the :class:`~econlm.userdata.DataFields`: a comma list of text
    columns becomes a tuple, a user's file paths become absolute (the config is saved and read back from
    elsewhere), and the task is looked up (built-in) or read and checked (a user's data), before anything
    heavy happens."""
    from econlm.userdata import DataSpec, looks_like_path, spec_of

    spec = spec_of(config)
    object.__setattr__(config, "text_columns", spec.text_columns)
    user = config.task not in TASKS and looks_like_path(config.task)
    if user:
        object.__setattr__(config, "task", str(Path(config.task).expanduser().resolve()))
        for name in ("train_file", "dev_file"):
            if getattr(config, name, None):
                object.__setattr__(config, name, str(Path(getattr(config, name)).expanduser().resolve()))
        spec = spec_of(config)
    get_task(config.task, spec if user or spec != DataSpec() else None)


# ---------------------------------------------------------------------------------------------------------
# Locating data


def data_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: the argument, else ``$ECONLM_DATA``, else None (use the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get("ECONLM_DATA") or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        source = "--data-dir" if data_dir is not None else "ECONLM_DATA"
        raise UserError(f"data folder {root} (from {source}) does not exist; point it at a folder laid out like GLUE")
    return root


def local_candidates(task: Task, split: str, root: Path) -> list[Path]:
    """Every path where ``split`` of ``task`` may lie under ``root``, in the order they are tried."""
    names = task.local_files.get(split, ())
    folders = (
        [root / "glue" / task.local_folder, root / task.local_folder] if not task.is_lm else [root / task.local_folder]
    )
    return [folder / name for folder in folders for name in names]


def _check_split(task: Task, split: str) -> None:
    valid = sorted(set(task.local_files) | set(task.hub_splits))
    if split not in valid:
        raise unknown_name(f"split of {task.name}", split, valid)


def sample_indices(total: int, count: int, seed: int) -> list[int]:
    """``count`` of ``range(total)`` (all, when fewer), drawn by ``seed``: the one draw both a Fisher-started
    student and compaction's calibration make, so a rival measured on it sees the student's examples."""
    return random.Random(seed).sample(range(total), min(count, total))


def load_examples(task: Task | str, split: str = "dev", data_dir=None, limit: int | None = None) -> list[Example]:
    """Load a GLUE split as :class:`Example` s (the first ``limit`` of them when given)."""
    task = get_task(task) if isinstance(task, str) else task
    if task.is_lm:
        raise ValueError(f"{task.name} is a language-modelling task; use load_text")
    if task.user is not None:
        from econlm import userdata

        rows = userdata.split_rows(task.user, split, limit)
        return [Example(texts[0], texts[1] if len(texts) > 1 else None, label) for texts, label in rows]
    _check_split(task, split)
    root = data_root(data_dir)
    tried: list[Path] = []
    if root is not None:
        for path in local_candidates(task, split, root):
            tried.append(path)
            if path.exists():
                return read_glue_tsv(task, path, limit)
    return _from_hub(task, split, tried, lambda rows: _hub_examples(task, rows, limit))


def lm_train_split(task: Task, data_dir=None) -> str:
    """The split a language model trains on: ``train`` when its file is in the local folder (WikiText-2
    ships one) or there is no local folder (the hub has it), else ``dev``: the local WikiText-103 has only
    validation and test, and training on validation keeps the test set unseen."""
    if task.user is not None:
        return "train"
    root = data_root(data_dir)
    if root is None or any(path.exists() for path in local_candidates(task, "train", root)):
        return "train"
    return "dev"


def load_text(task: Task | str, split: str = "dev", data_dir=None) -> str:
    """Load a WikiText split as one string (the release's lines joined as in the original files)."""
    task = get_task(task) if isinstance(task, str) else task
    if not task.is_lm:
        raise ValueError(f"{task.name} is not a language-modelling task; use load_examples")
    if task.user is not None:
        from econlm import userdata

        return userdata.train_text(task.user) if split == "train" else userdata.text(task.user, split)
    _check_split(task, split)
    root = data_root(data_dir)
    tried: list[Path] = []
    if root is not None:
        for path in local_candidates(task, split, root):
            tried.append(path)
            if path.exists():
                return _read_text(path)
    return _from_hub(task, split, tried, lambda rows: "".join(rows["text"]))


def _from_hub(task: Task, split: str, tried: list[Path], convert: Callable):
    dataset, config = task.hub_dataset
    hub_split = task.hub_splits.get(split)
    if hub_split is not None and not _hub_disabled():
        try:
            import datasets

            rows = datasets.load_dataset(dataset, config, split=hub_split)
            return convert(rows)
        except Exception as error:  # noqa: BLE001 - any hub failure becomes the one-line error below
            hub_note = f"the hub ({dataset}/{config}, split {hub_split}) failed: {str(error).splitlines()[0]}"
    else:
        hub_note = "the Hugging Face hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    paths = ", ".join(str(p) for p in tried) or "none (no --data-dir and no ECONLM_DATA)"
    raise UserError(
        f"no data for {task.name} {split}: tried {paths}; {hub_note}. Get the data by pointing --data-dir or "
        f"ECONLM_DATA at a folder laid out like GLUE (see the README), or with network access to the hub."
    )


def _hub_disabled() -> bool:
    return any(
        os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_examples(task: Task, rows, limit: int | None) -> list[Example]:
    *text_columns, label_column = task.hub_columns
    count = len(rows) if limit is None else min(limit, len(rows))
    out = []
    for i in range(count):
        row = rows[i]
        label = row[label_column]
        out.append(
            Example(
                text_a=row[text_columns[0]],
                text_b=row[text_columns[1]] if len(text_columns) > 1 else None,
                label=float(label) if task.kind == "regression" else int(label),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# GLUE TSV files


def read_glue_tsv(task: Task, path: Path, limit: int | None = None) -> list[Example]:
    """Read a GLUE TSV with quoting off and a possible BOM; malformed rows name the file and line."""
    # surrogateescape: a byte that is not UTF-8 is reported with its line (below), not as a traceback.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            examples = _read_rows(task, path, reader, limit)
        except csv.Error as error:  # a NUL byte (Python 3.10), a field over the csv size limit
            raise UserError(f"{path}:{reader.line_num}: unreadable row ({error}); is this a GLUE TSV file?") from None
    # Checked here, while reading, so the error comes before any model load or progress bar.
    if not examples and limit != 0:
        content = "no examples" if _headerless(task) else "a header but no examples"
        raise UserError(f"{path} has {content}; restore the file or point --data-dir at a complete copy of the data")
    return examples


def _read_rows(task: Task, path: Path, reader, limit: int | None) -> list[Example]:
    *text_columns, label_column = task.local_columns
    headerless = _headerless(task)
    examples: list[Example] = []
    if headerless:
        indices = [int(c) for c in task.local_columns]
        width = None
    else:
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path} is empty; expected a header line with {', '.join(task.local_columns)}")
        _check_utf8("\t".join(header), path, 1)
        missing = [c for c in task.local_columns if c not in header]
        if missing:
            if path.name.startswith("test") and missing == [label_column]:
                raise UserError(f"{path} has no labels ({label_column}); GLUE test sets are unlabelled, use dev")
            raise UserError(
                f"{path}:1: header lacks column(s) {', '.join(missing)}; found {', '.join(header) or 'a blank line'}"
            )
        indices = [header.index(c) for c in task.local_columns]
        width = len(header)
    for line_number, row in enumerate(reader, start=1 if headerless else 2):
        if limit is not None and len(examples) >= limit:
            break
        if not row or row == [""]:
            continue
        _check_utf8("\t".join(row), path, line_number)
        if (width is not None and len(row) != width) or len(row) <= max(indices):
            expected = width if width is not None else f"at least {max(indices) + 1}"
            raise UserError(
                f"{path}:{line_number}: malformed row: expected {expected} tab-separated fields, found {len(row)}"
            )
        label = _parse_label(task, row[indices[-1]], path, line_number)
        texts = [row[i] for i in indices[:-1]]
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def _headerless(task: Task) -> bool:
    return all(c.isdigit() for c in task.local_columns)  # columns given by position, as for CoLA


# What errors="surrogateescape" turns the bytes 0x80..0xff of invalid UTF-8 into.
_UNDECODABLE = re.compile("[\udc80-\udcff]+")


def _read_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    bad = _UNDECODABLE.search(text)
    if bad:
        _check_utf8(bad.group(), path, text.count("\n", 0, bad.start()) + 1)
    return text


def _check_utf8(text: str, path: Path, line: int) -> None:
    bad = _UNDECODABLE.search(text)
    if bad:
        raw = bad.group().encode("utf-8", errors="surrogateescape")
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (bytes {raw.hex(' ')}); re-save the file as UTF-8 or get a fresh copy"
        )


def _parse_label(task: Task, raw: str, path: Path, line: int) -> float | int:
    raw = raw.strip()
    if task.kind == "regression":
        return _parse_score(task, raw, path, line)
    try:
        if raw in task.label_names:
            return task.label_names.index(raw)
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not (0 <= value < task.num_labels):
        valid = f"0..{task.num_labels - 1}" + (f" or {', '.join(task.label_names)}" if task.label_names else "")
        raise UserError(f"{path}:{line}: malformed label '{raw}'; expected {valid}")
    return value


def _parse_score(task: Task, raw: str, path: Path, line: int) -> float:
    low, high = task.score_range or (-math.inf, math.inf)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    # "not low <= value" also rejects nan, which float() accepts.
    if not low <= value <= high:
        raise UserError(f"{path}:{line}: malformed score '{raw}'; expected a number from {low:g} to {high:g}")
    return value
