"""Your own data as a task: a CSV, TSV or JSONL file, a ``datasets`` folder saved with ``save_to_disk``, or a
``.txt`` corpus for language modelling.

A user task is named by its path (``--task tickets.csv``) and described by a :class:`DataSpec`: which
columns hold the text (one, or two for pairs) and the label, the task type, the headline metric, and
optional separate files for the train and dev splits. Without a dev file, a fixed 10% of the examples
(chosen by a permutation of seed 0, the same for every run) is held out as dev and the rest is train, so a
score is never measured on examples the model trained on.

Labels: integers are class ids; strings are class names, mapped to ids in sorted order (the map is saved
with every trained checkpoint as ``id2label``); floats make a regression task. The task type and the
metric follow from the labels unless given (classification: accuracy, and F1 for two classes;
regression: Spearman and Pearson; language modelling: perplexity).

Every mistake is one line that names the file, and the line where it applies: a missing column (listing
the columns there are), an empty file, mixed label types, a NaN or non-numeric regression label, bytes
that are not UTF-8, a dev label never seen in train.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

from econlm.errors import UserError

TASK_TYPES = ("classification", "regression", "lm")
METRICS = {
    "classification": ("accuracy", "f1", "mcc"),
    "regression": ("spearman", "pearson"),
    "lm": ("perplexity",),
}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
TEXT_SUFFIXES = (".txt", ".tokens", ".raw")
# Without --text-columns, the first of these the header has. Pairs come first: a QNLI-style header has both
# `question` and `sentence`, and reading `sentence` alone would silently drop half of every example.
DEFAULT_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("text",),
    ("sentence",),
)
HOLDOUT = 0.1  # share of a single file held out as dev


@dataclass(frozen=True)
class DataSpec:
    """How to read a user's data; every field may be left to its default."""

    train: str | None = None  # a separate train file (else the task's file)
    dev: str | None = None  # a separate dev file (else 10% of the task's file)
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    task_type: str | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise UserError(f"--task-type must be one of {', '.join(TASK_TYPES)}, not {self.task_type!r}")
        if len(self.text_columns) > 2:
            raise UserError(f"--text-columns takes one column or two (a pair), not {len(self.text_columns)}")


@dataclass(frozen=True, kw_only=True)
class DataFields:
    """The settings of a user's own data, shared by the train, probe and compact configs (keyword-only, so
    they follow every config's own fields)."""

    train_file: str | None = None  # a separate train file (else the task's file less its dev share)
    dev_file: str | None = None  # a separate dev file (else 10% of the task's file)
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    task_type: str | None = None
    metric: str | None = None


DATA_FIELDS = tuple(f.name for f in fields(DataFields))  # the configs' fields that describe a user's data


@dataclass(frozen=True)
class UserData:
    """A user's data, read and checked: what kind of task it makes, and one row list per split.
    :mod:`econlm.data` turns it into a task; this module knows nothing of tasks (it is below them)."""

    files: dict  # split -> path
    holdout: bool  # dev is 10% of the one file
    kind: str = "classification"
    metrics: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    rows: dict = field(default_factory=dict, compare=False, repr=False)  # split -> [(texts, label)]

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.kind == "classification" else 1


def looks_like_path(name: str) -> bool:
    path = Path(name)
    return path.suffix.lower() in (*TABLE_SUFFIXES, *TEXT_SUFFIXES) or path.exists()


def read(name: str, spec: DataSpec) -> UserData:
    """Read and check a user's data (errors name the file, and the line)."""
    path = Path(name)
    if not path.exists():
        raise UserError(f"--task {name}: no such file or folder; give a built-in task (econlm list) or a data file")
    if _is_text(path) or spec.task_type == "lm":
        return _text_data(path, spec)
    files = {"train": Path(spec.train) if spec.train else path, "dev": Path(spec.dev) if spec.dev else None}
    _check_exist(files)
    tables = {split: _read_table(file) for split, file in files.items() if file is not None}
    text_columns, label_column = _columns(tables, spec)
    rows = {split: _rows(file, tables[split], text_columns, label_column) for split, file in files.items() if file}
    kind = spec.task_type or _infer_kind(rows["train"], files["train"])
    if kind == "classification":
        _check_label_types(rows["train"], files["train"])  # the whole file, before a dev share is held out
    holdout = files["dev"] is None
    if holdout:
        rows["train"], rows["dev"] = _split_off_dev(rows["train"], files["train"])
    labels, label_names = _labels(kind, rows, files)
    metrics = _metrics(kind, len(label_names) if kind == "classification" else 1, spec.metric)
    data = UserData(
        {k: str(v) for k, v in files.items() if v},
        holdout,
        kind=kind,
        metrics=metrics,
        label_names=tuple(label_names) if kind == "classification" else (),
    )
    data.rows.update({split: [(texts, labels[split][i]) for i, (texts, _, _) in enumerate(r)] for split, r in rows.items()})
    return data


def _check_exist(files: dict) -> None:
    flags = {"train": "--train", "dev": "--dev"}
    for split, file in files.items():
        if file is not None and not Path(file).exists():
            raise UserError(f"{flags[split]} {file}: no such file or folder")


def _is_text(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def _text_data(path: Path, spec: DataSpec) -> UserData:
    if spec.metric not in (None, "perplexity"):
        raise UserError(f"--metric {spec.metric}: a text corpus is scored by perplexity")
    files = {"train": str(Path(spec.train) if spec.train else path)}
    if spec.dev:
        files["dev"] = str(spec.dev)
    _check_exist({k: Path(v) for k, v in files.items()})
    for file in files.values():
        text = _read_utf8(Path(file))
        if not text.strip():
            raise UserError(f"{file} is empty; a language-modelling corpus needs text")
    return UserData(files, holdout="dev" not in files, kind="lm", metrics=("perplexity",))


# ---------------------------------------------------------------------------------------------------------
# Reading


def _read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        bad = raw[error.start : error.end]
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (bytes {bad.hex(' ')}); re-save the file as UTF-8"
        ) from None


def _read_table(path: Path) -> tuple[list[str], list[tuple[dict, int]], Path]:
    """Column names, (row, line) pairs and the path of a CSV, TSV, JSONL file or a save_to_disk folder."""
    return (*_read_any(path), path)


def _read_any(path: Path) -> tuple[list[str], list[tuple[dict, int]]]:
    if path.is_dir():
        return _read_saved_dataset(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"{path}: unknown data format '{suffix}'; use .csv, .tsv, .jsonl, a .txt corpus or a folder "
                        "saved with datasets' save_to_disk")
    text = _read_utf8(path)
    if not text.strip():
        raise UserError(f"{path} is empty; expected a header line and examples")
    if TABLE_SUFFIXES[suffix] is None:
        return _read_jsonl(path, text)
    # CSV quotes fields (a ticket body may hold newlines and commas); TSV, as GLUE's files, does not quote.
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=TABLE_SUFFIXES[suffix], quoting=quoting)
    header = next(reader)
    rows = []
    try:
        for values in reader:
            line = reader.line_num  # the row's last line: a quoted field can span several
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                raise UserError(f"{path}:{line}: expected {len(header)} fields (the header's), found {len(values)}")
            rows.append((dict(zip(header, values)), line))
    except csv.Error as error:
        raise UserError(f"{path}:{reader.line_num}: unreadable row ({error})") from None
    if not rows:
        raise UserError(f"{path} has a header but no examples")
    return header, rows


def _read_jsonl(path: Path, text: str):
    rows, columns = [], {}
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{line}: not a JSON object ({error.msg}); one object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line}: not a JSON object; one object per line")
        columns.update(dict.fromkeys(row))
        rows.append((row, line))
    return list(columns), rows


def _read_saved_dataset(path: Path):
    try:
        import datasets

        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - any failure to read the folder becomes one line
        raise UserError(f"{path}: not a folder saved with datasets' save_to_disk ({str(error).splitlines()[0]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = next((s for s in ("train", "validation", "dev", "test") if s in loaded), None)
        if split is None:
            raise UserError(f"{path}: the saved dataset has splits {', '.join(loaded)}; expected train")
        loaded = loaded[split]
    if len(loaded) == 0:
        raise UserError(f"{path} holds no examples")
    return list(loaded.column_names), [(row, i + 1) for i, row in enumerate(loaded)]


def _columns(tables: dict, spec: DataSpec) -> tuple[tuple[str, ...], str]:
    """The text and label columns, checked in every file; a missing one lists the columns there are."""
    header = tables["train"][0]
    text_columns = spec.text_columns or next((c for c in DEFAULT_TEXT_COLUMNS if set(c) <= set(header)), None)
    if text_columns is None:
        raise UserError(f"{_first_file(tables)}: no text column given; pass --text-columns (columns: {', '.join(header)})")
    label_column = spec.label_column or ("label" if "label" in header else None)
    if label_column is None:
        raise UserError(f"{_first_file(tables)}: no label column given; pass --label-column (columns: {', '.join(header)})")
    return tuple(text_columns), label_column


def _first_file(tables: dict) -> str:
    return str(tables["train"][2])


def _rows(path: Path, table, text_columns, label_column) -> list[tuple[tuple[str, ...], object, int]]:
    header, rows, _ = table
    missing = [c for c in (*text_columns, label_column) if c not in header]
    if missing:
        raise UserError(f"{path}: no column {', '.join(repr(c) for c in missing)}; its columns are {', '.join(header)}")
    out = []
    for row, line in rows:
        texts = []
        for column in text_columns:
            value = row.get(column)
            if not isinstance(value, str):
                raise UserError(f"{path}:{line}: column '{column}' holds {value!r}, not text")
            texts.append(value)
        out.append((tuple(texts), row.get(label_column), line))
    return out


def _split_off_dev(rows: list, path: Path) -> tuple[list, list]:
    if len(rows) < 2:
        raise UserError(f"{path}: {len(rows)} example(s) cannot be split into train and dev; add examples or --dev")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    n_dev = max(1, round(HOLDOUT * len(rows)))
    dev = set(order[:n_dev])
    return [r for i, r in enumerate(rows) if i not in dev], [r for i, r in enumerate(rows) if i in dev]


# ---------------------------------------------------------------------------------------------------------
# Labels


def _label_type(value) -> str:
    """int, float or str; CSV and TSV cells are text, so numbers in them count as numbers."""
    if isinstance(value, bool) or value is None:
        return "other"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        text = value.strip()
        try:
            int(text)
            return "int"
        except ValueError:
            pass
        try:
            float(text)
            return "float"
        except ValueError:
            return "str"
    return "other"


def _infer_kind(rows, path) -> str:
    types = {_label_type(label) for _, label, _ in rows}
    if types <= {"int", "float"} and "float" in types:
        return "regression"
    return "classification"


def _labels(kind: str, rows: dict, files: dict) -> tuple[dict, list]:
    """Labels per split as ids (classification) or floats (regression), and the class names."""
    if kind == "regression":
        return {split: [_score(label, files, split, line) for _, label, line in r] for split, r in rows.items()}, []
    numeric = all(_label_type(label) == "int" for _, label, _ in rows["train"])
    # The classes are the labels seen in training, in sorted order (numerically for integer labels): ids
    # 0..K-1 stay themselves, and sparse ids (200, 404) or names become 0..K-1 in that order.
    names = sorted({_class(label, numeric) for _, label, _ in rows["train"]}, key=lambda v: int(v) if numeric else v)
    index = {name: i for i, name in enumerate(names)}
    if len(index) < 2:
        raise UserError(f"{files['train']}: every example has the label {names[0]!r}; classification needs two classes")
    out = {}
    for split, split_rows in rows.items():
        ids = []
        for _, label, line in split_rows:
            key = _class(label, numeric)
            if key not in index:
                where = files.get(split) or files["train"]
                raise UserError(
                    f"{where}:{line}: label {label!r} never occurs in the training data ({', '.join(names)}); "
                    "a model cannot learn it"
                )
            ids.append(index[key])
        out[split] = ids
    return out, names


def _check_label_types(rows, path) -> None:
    """Class labels are all names or all integer ids: a mix is a mistake in the file, not two classes."""
    first: dict[str, tuple[object, int]] = {}
    for _, label, line in rows:
        first.setdefault(_label_type(label), (label, line))
    if "other" in first:
        label, line = first["other"]
        raise UserError(f"{path}:{line}: label {label!r} is not a class name, a class id or a number")
    if len(first) > 1:
        (a, line_a), (b, line_b) = sorted(first.values(), key=lambda item: item[1])[:2]
        raise UserError(
            f"{path}: mixed label types: line {line_a} has {a!r}, line {line_b} has {b!r}; labels are all class "
            "names, all class ids, or all numbers (--task-type regression)"
        )
    if "float" in first:
        label, line = first["float"]
        raise UserError(f"{path}:{line}: label {label!r} is not a class; for scores use --task-type regression")


def _class(label, numeric: bool) -> str:
    return str(int(str(label).strip())) if numeric else str(label).strip()


def _score(label, files, split, line) -> float:
    try:
        value = float(str(label).strip()) if not isinstance(label, (int, float)) or isinstance(label, bool) else float(label)
    except ValueError:
        value = math.nan
    if isinstance(label, bool) or not math.isfinite(value):
        where = files.get(split) or files["train"]
        raise UserError(f"{where}:{line}: regression label {label!r} is not a finite number")
    return value


def _metrics(kind: str, num_labels: int, chosen: str | None) -> tuple[str, ...]:
    if kind == "regression":
        default = ("spearman", "pearson")
    elif num_labels == 2:
        default = ("accuracy", "f1")
    else:
        default = ("accuracy",)
    if chosen is None:
        return default
    allowed = METRICS[kind] if num_labels == 2 or kind != "classification" else ("accuracy", "mcc")
    if chosen not in allowed:
        raise UserError(f"--metric {chosen} does not fit a {kind} task; choose from {', '.join(allowed)}")
    return (chosen, *(m for m in default if m != chosen))


# ---------------------------------------------------------------------------------------------------------
# Splits for the loaders


def split_rows(data: UserData, split: str, limit: int | None) -> list[tuple[tuple[str, ...], object]]:
    """(texts, label) of a split's first ``limit`` examples."""
    if split not in data.rows:
        raise UserError(f"{data.files['train']} has the splits {', '.join(data.rows)}, not {split}")
    rows = data.rows[split]
    return rows[:limit] if limit is not None else rows


def text(data: UserData, split: str) -> str:
    """A corpus split: the dev file, or the first 90% / last 10% of the one file's lines."""
    split = "dev" if split == "test" else split  # a user's corpus has one held-out split: dev is the test
    if split in data.files:
        return _read_utf8(Path(data.files[split]))
    if split in ("dev", "test") and data.holdout:
        lines = _read_utf8(Path(data.files["train"])).splitlines(keepends=True)
        return "".join(lines[len(lines) - max(1, round(HOLDOUT * len(lines))) :])
    raise UserError(f"{data.files['train']} has no {split} split")


def train_text(data: UserData) -> str:
    content = _read_utf8(Path(data.files["train"]))
    if not data.holdout:
        return content
    lines = content.splitlines(keepends=True)
    return "".join(lines[: len(lines) - max(1, round(HOLDOUT * len(lines)))])


def spec_of(settings) -> DataSpec:
    """The DataSpec in a config's fields (TrainConfig, ProbeConfig, CompactConfig or a dict)."""
    get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
    columns = get("text_columns", None) or ()
    if isinstance(columns, str):
        columns = tuple(c.strip() for c in columns.split(",") if c.strip())
    return DataSpec(
        train=get("train_file", None),
        dev=get("dev_file", None),
        text_columns=tuple(columns),
        label_column=get("label_column", None),
        task_type=get("task_type", None),
        metric=get("metric", None),
    )
