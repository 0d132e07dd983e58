"""Issue #11's benchmark: post-hoc token budgets alone and on compacted models (units + tokens), on MiniLM.

    python bench/tokens.py score stsb --model teacher=DIR --model units-b0.5=DIR ...  # scores (resumable)
    python bench/tokens.py score cola --retire teacher --model teacher-r4=DIR --model units-r4=DIR \
        --against units-r4=teacher-r4                                                # a run with its own teacher
    python bench/tokens.py time stsb [--repeats 20]                                  # interleaved latency
    python bench/tokens.py docs stsb                                                 # docs/tokens_<task>.md

`score` scores every model at every schedule on the whole dev split (the exact computation: dynamic padding,
batches of 32, 128 tokens at most) and counts the exact MACs of the shortened sequences on the real tokens
(`econlm.flops.shortened_macs`; padding never counted). `time` times every (model, schedule) pair against the
model it loses against at full length (the first model, or the teacher named with --against), round by round
in one run, on real dev batches (dynamic padding, batch 1 and 32)
and on the fixed 128-token synthetic batch. Each step saves to runs/bench_tokens/<task>.json after every
measurement, so a rerun continues; `docs` writes bench/results/tokens_<task>.json and docs/tokens_<task>.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, RESULTS, ROOT, markdown_table, save  # noqa: E402

# "full" first; then one fraction for every layer, then PoWER-BERT-style schedules that keep more early on.
SCHEDULES = [
    "full",
    "1,1,0.9,0.8,0.7,0.7",
    "1,0.9,0.8,0.7,0.6,0.6",
    "0.9",
    "0.7",
    "0.5",
    "1,0.8,0.6,0.5,0.4,0.4",
    "0.8,0.6,0.5,0.4,0.3,0.3",
    "1,0.7,0.5,0.35,0.25,0.25",
    "0.7,0.5,0.35,0.25,0.2,0.2",
    "1,0.5,0.4,0.3,0.25,0.25",  # every token through layer 0, then about 0.58 of the MACs: the retrained schedule
]
STATE = ROOT / "runs" / "bench_tokens"
TIME_EXAMPLES = {1: 64, 32: 256}  # dev examples per timed pass at each batch size
CURVE_LENGTHS = (8, 16, 32, 64, 128)  # the reference model at batch 1 on random rows of these lengths


LEARNED = "learned"  # a checkpoint trained with --cost tokens: its own thresholds (token_thresholds.json)
# A checkpoint fine-tuned under a fixed schedule (econlm train --token-budget): "trained under 0.5" runs its own
TRAINED_UNDER = "trained under "


def _schedules(folder: str) -> list[str]:
    """A checkpoint with a token rule of its own runs that rule only (a second budget on top is refused)."""
    if (Path(folder) / "token_thresholds.json").exists():
        return [LEARNED]
    schedule = Path(folder) / "token_schedule.json"
    if schedule.exists():
        return [TRAINED_UNDER + _label(json.loads(schedule.read_text())["schedule"])]
    return SCHEDULES


def _label(fractions: list[float]) -> str:
    """A schedule as SCHEDULES writes it: one fraction when every layer keeps the same share."""
    return ",".join(f"{f:g}" for f in (fractions[:1] if len(set(fractions)) == 1 else fractions))


def _own_rule(schedule: str) -> bool:
    """Whether a variant runs the model's own token rule (nothing to attach around it)."""
    return schedule == LEARNED or schedule.startswith(TRAINED_UNDER)


def _reference(state: dict) -> str:
    """The model every other is compared with: the first ever given to ``score`` (the JSON state sorts keys,
    so the name is stored)."""
    return state["reference"]


def _present(state: dict) -> dict[str, str]:
    """The models that can be scored and timed now: their folder is here and still holds them. A retired model
    (its folder trained again in place, `score --retire NAME`) keeps its numbers, like one whose folder is gone."""
    retired = set(state.get("retired", ()))
    return {n: f for n, f in state["models"].items() if n not in retired and Path(f).exists()}


def _name_references(state: dict, models: dict[str, str], against: dict[str, str], retire: list[str]) -> None:
    """Record ``--retire`` and ``--against`` in the state, refusing (one line) names the state does not hold."""
    known = set(state["models"]) | set(models)
    for name in retire:
        if name not in state["models"]:
            raise SystemExit(f"--retire {name}: no model of that name in the state; it holds {', '.join(sorted(known))}")
        if name not in state.setdefault("retired", []):
            state["retired"].append(name)
    for model, reference in against.items():
        if model not in known or reference not in known:
            missing = model if model not in known else reference
            raise SystemExit(f"--against {model}={reference}: '{missing}' is not a model; name it with --model first")
        if reference in state.get("retired", []):
            raise SystemExit(f"--against {model}={reference}: '{reference}' is retired; name the model trained with it")
    state.setdefault("references", {}).update(against)


def _state_path(task: str) -> Path:
    return STATE / f"{task}.json"


def _load(task: str) -> dict:
    """The benchmark's state: this machine's (runs/bench_tokens), else the one the last `docs` step saved in
    bench/results (a fresh checkout goes on from the committed numbers), else a new one."""
    path = _state_path(task)
    if path.exists():
        return json.loads(path.read_text())
    saved = RESULTS / f"tokens_{task}.json"
    if saved.exists():
        payload = json.loads(saved.read_text())
        state = payload["state"]
        for case in state.get("timing", {}).values():  # timed before each variant named its run: the docs step's
            case.setdefault("timed", dict.fromkeys(case["speedup"], payload["meta"]["time_utc"]))
        print(f"continuing from {saved}", flush=True)
        return state
    return {"task": task, "models": {}, "scores": {}}


def _fingerprint(folder: str) -> list:
    """Which model a folder holds: its weight files' names, sizes and modification times. A benchmark folder
    trained again in place (a later session reruns the same trial) holds another model under the same path."""
    files = sorted(Path(folder).glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _same_model(state: dict, name: str, folder: str, checked_score: float | None = None) -> None:
    """Refuse to score or time ``name`` when its folder now holds another model than the one its numbers are
    of, then fingerprint it. Numbers from before fingerprints were kept need ``checked_score``: the score of
    the model's first variant (full length, or the token rule it carries) measured now, which ``score`` takes."""
    prints = state.setdefault("fingerprints", {})
    here = _fingerprint(folder)
    stored = state["scores"].get(f"{name}|{_schedules(folder)[0]}")
    another = (
        f"{folder} now holds another model than the '{name}' scored here (trained again in place?); give it a new "
        "name with --model NAME=DIR, and keep the old name's numbers as they are"
    )
    if name in prints:
        if prints[name] != here:
            raise SystemExit(another)
    elif stored is not None:  # scored before fingerprints were kept
        if checked_score is None:
            raise SystemExit(
                f"'{name}' was scored before models were fingerprinted: run `bench/tokens.py score "
                f"{state.get('task')}` first, which checks that its folder still holds that model"
            )
        if abs(checked_score - stored["score"]) > 1e-4:
            raise SystemExit(another)
    prints[name] = here


def _save(task: str, state: dict) -> None:
    from econlm.runinfo import write_json

    write_json(_state_path(task), state)


def score(
    task: str, models: dict[str, str], against: dict[str, str] | None = None, retire: list[str] | None = None
) -> None:
    import torch

    from econlm.data import load_examples
    from econlm.flops import Structure
    from econlm.models import load_model
    from econlm.probing import probe

    torch.set_num_threads(2)
    state = _load(task)
    if models and "reference" not in state:
        state["reference"] = next(iter(models))
    _name_references(state, models, against or {}, retire or [])
    state["models"].update(models)
    examples = load_examples(task, "dev", DATA)
    for name, folder in state["models"].items():
        if name not in _present(state):  # trained in an earlier session, or retired: its scores stand
            continue
        loaded, checked = None, None
        if f"{name}|{_schedules(folder)[0]}" in state["scores"] and name not in state.get("fingerprints", {}):
            # Numbers from before fingerprints were kept: is this still the model they are of? (Its first variant
            # runs at full length or by its own token rule, which loading attaches.)
            loaded = load_model(folder)
            checked = probe(loaded.model, loaded.tokenizer, examples, task=task, batch_size=32, max_length=128)
            checked = checked.rows[0]["score"]
        _same_model(state, name, folder, checked)
        for schedule in _schedules(folder):
            key = f"{name}|{schedule}"
            if key in state["scores"]:
                continue
            loaded = loaded or load_model(folder)
            started = time.time()
            result = probe(
                loaded.model,
                loaded.tokenizer,
                examples,
                task=task,
                batch_size=32,
                max_length=128,
                token_budget=None if schedule == "full" or _own_rule(schedule) else schedule,
            )
            row = result.rows[0]
            structure = Structure.of_model(loaded.model)
            state["scores"][key] = {
                "model": name,
                "schedule": schedule,
                "score": row["score"],
                "metric": row["metric"],
                "examples": row["examples"],
                "token_macs_ratio": row.get("token_macs_ratio", 1.0),
                "token_macs": row.get("token_macs"),
                "heads": sum(structure.heads),
                "ffn": sum(structure.ffn),
                "seconds": time.time() - started,
            }
            _save(task, state)
            print(f"{key}: {row['score']:.4f} (token MACs x{row.get('token_macs_ratio', 1.0):.3f})", flush=True)
    for name, folder in state["models"].items():
        if (Path(folder) / "token_schedule.json").exists() and (Path(folder) / "train_config.json").exists():
            state.setdefault("retrained_runs", {})[name] = _retrained_run(state, folder)
    _block_macs(state, examples)
    _save(task, state)


def _retrained_run(state: dict, folder: str) -> dict:
    """A run fine-tuned under a fixed schedule (econlm train --token-budget): its settings, steps, seconds and
    the model it started from and distilled from (named as in the state, so its loss is against it)."""
    path = Path(folder)
    metrics = json.loads((path / "metrics.json").read_text())
    config = json.loads((path / "train_config.json").read_text())
    named = {str(Path(f).resolve()): n for n, f in state["models"].items()}
    return {
        "folder": folder,
        "schedule": _label(json.loads((path / "token_schedule.json").read_text())["schedule"]),
        "seed": config["seed"],
        "epochs": config["epochs"],
        "lr": config["lr"],
        "distill_weight": config["distill_weight"] if config.get("teacher") else 0.0,
        "init_model": named.get(str(Path(config["model"]).resolve()), config["model"]),
        "teacher_model": named.get(str(Path(config["teacher"]).resolve())) if config.get("teacher") else None,
        "score": metrics["score"],
        "macs_ratio": metrics["token_budget"]["macs_ratio"],
        "tokens_per_layer": metrics["token_budget"]["tokens_per_layer"],
        "steps": metrics["train"]["steps"],
        "seconds": metrics["train"]["seconds"],
    }


def _block_macs(state: dict, examples: list) -> None:
    """Each model's block MACs on the real dev tokens at full length, so a (model, schedule) pair's MACs can be
    put against the first model's: share = (its block MACs on the real tokens x its ratio) / the first's."""
    from econlm.evaluate import encode
    from econlm.flops import Structure, shortened_macs
    from econlm.models import load_model

    first = _reference(state)
    for name, folder in state["models"].items():
        if name in state.setdefault("block_macs", {}) or name not in _present(state):
            continue
        loaded = load_model(folder)
        ids, _, _ = encode(
            loaded.tokenizer,
            [e.text_a for e in examples],
            [e.text_b for e in examples] if examples[0].text_b else None,
            128,
        )
        structure = Structure.of_model(loaded.model)
        layers = structure.layers
        state["mean_tokens"] = sum(len(row) for row in ids) / len(ids)  # real tokens per dev example
        state["block_macs"][name] = shortened_macs(structure, [(len(row),) * layers for row in ids])["reference_macs"]
    for entry in state["scores"].values():  # against the model it loses against (a dense one: its own)
        reference = state["block_macs"][_against(state, entry["model"], first)]
        entry["macs_share"] = state["block_macs"][entry["model"]] * entry["token_macs_ratio"] / reference


def record_learned(task: str, folders: list[str]) -> None:
    """Every learned-threshold run tried (kept or not): its settings, steps, score and token MACs, read from
    its metrics.json and train_config.json, so the docs show the runs that failed as well."""
    state = _load(task)
    runs = state.setdefault("learned_runs", {})
    for folder in folders:
        path = Path(folder)
        metrics = json.loads((path / "metrics.json").read_text())
        config = json.loads((path / "train_config.json").read_text())
        thresholds = json.loads((path / "token_thresholds.json").read_text())
        tokens = metrics["token_budget"]
        # a sweep trial's training run is its folder's model/: the trial id names it
        runs[path.parent.name if path.name == "model" else path.name] = {
            "folder": str(path),
            "format": thresholds.get("format"),
            "score": metrics["score"],
            "macs_ratio": tokens["macs_ratio"],
            "tokens_per_layer": tokens["tokens_per_layer"],
            "thresholds": tokens["thresholds"],
            "lambda_final": metrics["lambda_final"],
            "steps": metrics["train"]["steps"],
            "seconds": metrics["train"]["seconds"],
            "settings": {
                k: config[k]
                for k in ("budget", "price_lr", "budget_warmup", "gate_freeze", "epochs", "lr", "token_lr", "seed")
            },
            "init": config["model"],
            "teacher": config.get("teacher"),
            "cost": config.get("cost"),  # with flops or latency too: the gates learned in the same market
            "gates": metrics.get("gates"),
            "share_final": (metrics.get("cost_terms_last_step") or {}).get("cost/compute_share"),
            "gate_init": config.get("gate_init", "open"),
        }
    _save(task, state)


def _length_curve(model, repeats: int) -> dict:
    """The full model at batch 1 on random rows of each length, interleaved: how its time falls with tokens."""
    from econlm.latency import batches_call, measure_interleaved, random_inputs

    fns = {str(n): batches_call(model, [random_inputs(1, n)]) for n in CURVE_LENGTHS}
    timings = measure_interleaved(fns, warmup=3, repeats=repeats)
    longest = timings[str(CURVE_LENGTHS[-1])].median
    return {
        "repeats": repeats,
        "lengths": list(CURVE_LENGTHS),
        "share_of_longest": {n: t.median / longest for n, t in timings.items()},
        "timings": {n: t.as_dict() for n, t in timings.items()},
    }


def timing(task: str, repeats: int, schedules: list[str] | None, fresh: bool = False) -> None:
    import torch

    from econlm.data import load_examples
    from econlm.latency import batches_call, example_batches, measure_interleaved, random_inputs
    from econlm.models import load_model
    from econlm.tokens import token_budget

    torch.set_num_threads(2)
    state = _load(task)
    first = _reference(state)
    # A model whose folder is gone (trained in an earlier session, on another machine) or retired keeps the
    # speedups it was timed at; the rest are timed (again) in this run, each against the model it loses
    # against, which must be here.
    present = _present(state)
    against = {name: _against(state, name, first) for name in present}
    missing = sorted({ref for ref in against.values() if ref not in present})
    if not present or missing:
        why = f"the reference model(s) {', '.join(missing)} are not here" if missing else "no model is here"
        raise SystemExit(f"{why}; train them again, or name this run's teacher with `score --against MODEL=TEACHER`")
    gone = sorted(set(state["models"]) - set(present))
    if gone:
        print(f"not timed again (folder gone or retired, earlier timings kept): {', '.join(gone)}", flush=True)
    if fresh:  # time the models that are here again (after a change to the code timed), in one run
        for case in state.get("timing", {}).values():
            case["repeats_by_key"] = {k: r for k, r in _repeats_by_key(case).items() if k.split("|")[0] not in present}
        state.pop("length_curve", None)
    for name, folder in present.items():  # never time a model in place of the one the scores are of
        _same_model(state, name, folder)
    examples = load_examples(task, "dev", DATA)
    loaded = {name: load_model(folder) for name, folder in present.items()}
    for model in loaded.values():
        model.model.eval()
    if state.get("length_curve", {}).get("repeats") != repeats:
        print(f"timing the length curve: {len(CURVE_LENGTHS)} lengths x {repeats} rounds", flush=True)
        curve_model = first if first in present else next(iter(against.values()))  # a dense fine-tune either way
        state["length_curve"] = {**_length_curve(loaded[curve_model].model, repeats), "model": curve_model}
        _save(task, state)
    wanted = {"full", *(schedules or SCHEDULES)}  # every speedup's reference runs at full length
    cases = {}
    for batch, count in TIME_EXAMPLES.items():
        # every batch-th example, so the timed subset has the dev split's length mix
        subset = examples[:: max(1, len(examples) // count)][:count]
        tokenizer = next(iter(loaded.values())).tokenizer  # every model here shares MiniLM's tokenizer
        cases[f"dev_b{batch}"] = example_batches(tokenizer, subset, batch_size=batch, max_length=128)
    cases["synthetic_b32_s128"] = [random_inputs(32, 128)]
    out = state.setdefault("timing", {})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for case, batches in cases.items():
        fns, around = {}, {}
        for name, model in loaded.items():
            for schedule in [s for s in _schedules(state["models"][name]) if s in wanted or _own_rule(s)]:
                key = f"{name}|{schedule}"
                fns[key] = batches_call(model.model, batches)
                if schedule != "full" and not _own_rule(schedule):
                    around[key] = lambda m=model, s=schedule: token_budget(m.model, s, tokenizer=m.tokenizer)
        done = _repeats_by_key(out[case]) if case in out else {}
        if all(done.get(key) == repeats for key in fns):
            continue
        print(f"timing {case}: {len(fns)} variants x {repeats} rounds", flush=True)
        timings = measure_interleaved(fns, warmup=3, repeats=repeats, around=around)
        entry = out.setdefault(case, {"speedup": {}, "timings": {}, "timed": {}})
        entry.update(
            {
                "repeats": repeats,
                "batches": len(batches),
                "examples": sum(int(b["input_ids"].shape[0]) for b in batches),
                "tokens_padded": sum(int(b["input_ids"].numel()) for b in batches),
                "tokens_real": sum(int(b["attention_mask"].sum()) for b in batches),
            }
        )
        entry["speedup"].update(_speedups({k: t.median for k, t in timings.items()}, against))
        entry["timings"].update({k: t.as_dict() for k, t in timings.items()})
        entry.setdefault("timed", {}).update(dict.fromkeys(timings, now))
        entry.setdefault("against", {}).update({k: against[k.split("|")[0]] for k in timings})  # absent: `first`
        entry["repeats_by_key"] = {**_repeats_by_key(entry), **dict.fromkeys(timings, repeats)}
        _save(task, state)


def _speedups(medians: dict[str, float], against: dict[str, str]) -> dict[str, float]:
    """Each variant's speedup (``model|schedule``: median seconds) over the model it loses against at full
    length, timed in the same run."""
    return {key: medians[f"{against[key.split('|')[0]]}|full"] / median for key, median in medians.items()}


def _repeats_by_key(case: dict) -> dict[str, int]:
    """Rounds each variant of a timed case was timed with (older states kept one count for the case)."""
    if "repeats_by_key" in case:
        return case["repeats_by_key"]
    return dict.fromkeys(case.get("speedup", {}), case.get("repeats"))


def docs(task: str, conditions: str | None = None) -> None:
    state = _load(task)
    if conditions:
        state["conditions"] = conditions  # what shared the machine while timing, said once and kept
        _save(task, state)
    first = _reference(state)
    reference = state["scores"][f"{first}|full"]["score"]
    timing = state.get("timing", {})
    if "mean_tokens" not in state and state.get("learned_runs"):
        # States saved before mean_tokens was kept: the first layer of a learned run runs every real token, so
        # its tokens per layer starts with the dev split's mean real length.
        state["mean_tokens"] = next(iter(state["learned_runs"].values()))["tokens_per_layer"][0]
    rows = []
    retrained = state.get("retrained_runs", {})
    for key, entry in state["scores"].items():
        # A run fine-tuned from (and distilled from) another seed's fine-tune loses against that one
        against = _against(state, entry["model"], first)
        row = {
            "model": entry["model"],
            "schedule": entry["schedule"],
            "score": entry["score"],
            "against": against,
            "lost": state["scores"][f"{against}|full"]["score"] - entry["score"],
            "macs_share": entry.get("macs_share"),
            "token_macs_ratio": entry["token_macs_ratio"],
            "levers": _levers(entry, state["scores"][f"{first}|full"]),
        }
        for case, data in timing.items():
            row[f"speedup_{case}"] = data["speedup"].get(key)
            row[f"timed_{case}"] = (data.get("timed") or {}).get(key)  # which run timed this case
            row.setdefault("timed", row[f"timed_{case}"])
        rows.append(row)
    # Sessions whose models are gone leave their timings; each speedup is still a ratio from one run.
    runs = sorted({r["timed"] for r in rows if r.get("timed")})
    run_column = len(runs) > 1
    table = markdown_table(
        (["timed (UTC)"] if run_column else [])
        + ["model", "levers", "token schedule", "score", "against", "lost", "block MACs share", "tokens' MACs ratio"]
        + [f"speedup {c}" for c in timing],
        [
            ([r.get("timed") or "-"] if run_column else [])
            + [
                r["model"],
                r["levers"],
                r["schedule"],
                f"{r['score']:.4f}",
                r["against"],
                f"{r['lost']:+.4f}",
                "-" if r["macs_share"] is None else f"{r['macs_share']:.3f}",
                f"{r['token_macs_ratio']:.3f}",
            ]
            + ["-" if r.get(f"speedup_{c}") is None else f"{r[f'speedup_{c}']:.2f}x" for c in timing]
            for r in rows
        ],
    )
    if run_column:
        table += (
            f"\n\nTimed in {len(runs)} runs ({', '.join(runs)}): each row's speedups are against a full-length model "
            "timed in the same run (the models of an earlier session are gone with its machine, or their folder was "
            "trained again in place, so they keep the speedups that run measured)."
        )
    verdicts = _targets(rows, first, timing)
    learned = _learned_table(state.get("learned_runs", {}))
    retrained_table = _retrained_table(retrained, state)
    reading = _reading(state, rows, first)
    cases = "; ".join(
        f"{c}: {d['examples']} dev examples in {d['batches']} batches, {d['tokens_real']} real of "
        f"{d['tokens_padded']} padded tokens"
        if c.startswith("dev")
        else f"{c}: one batch of 32 random 128-token rows (every token real)"
        for c, d in timing.items()
    )
    rounds = next(iter(timing.values()))["repeats"] if timing else 0
    markdown = f"""# Token budgets on {task} (issue #11)

Post-hoc token budgets (`econlm.tokens`, PoWER-BERT's rule: after layer l each example keeps its ceil(r_l x
length) tokens that receive the most attention; [CLS]/[SEP] always kept; later layers run on a shorter batch)
on the models below, alone and on compacted models (units + tokens). A schedule of one fraction applies it after
every layer; one per layer is PoWER-BERT's progressive form (the last layer's entry decides nothing).

Models: {_model_list(state)}.

- **Score**: the whole dev split, batches of 32 with dynamic padding, 128 tokens at most, of exactly the
  computation timed; lost is against the model in the column "against" at full length: a dense fine-tune
  against itself, a compacted or retrained model against the fine-tune it came from (its seed's, or its own
  run's teacher). `{first}` at full length scores {reference:.4f}.
- **Block MACs share**: MACs of the blocks on each example's real tokens, each layer on the tokens it ran on,
  against the "against" model at full length on the same tokens (`econlm.flops.shortened_macs`; padding is
  never counted, so the share is what the token rule saves, not what a padded batch would waste). The task
  head and the embeddings are not counted.
- **Speedup**: the "against" model at full length over the variant, timed in the same run (timing runs from
  before the column existed timed every variant against `{first}`, a model of the same shape as every dense
  fine-tune), medians of {rounds} rounds after 3 warm-up rounds, every variant timed round by round in one
  run, 2 threads, CPU. All run eager attention (econlm loads models so: a token budget reads the attention
  probabilities), so the ratios compare the same attention code. Cases: {cases}.

{table}

{state.get("conditions", "")}
{_per_fine_tune(rows, state)}

## Learned thresholds (LTP style): every run tried

Each starts from the model it names (the lambda = 0 fine-tune, or a compacted one), distils from the
fine-tune, and trains its thresholds under the price controller (`econlm train --cost tokens --budget B`);
format 1 is the first value definition (shares of all the attention, sinks included), format 2 the share
among the droppable tokens, format 3 the same over the open heads only (it reads like format 2 on a model
with no shut head, as every model here; see `econlm.learned_tokens`). Scores and MACs as measured by
`econlm train` at the end (dev split, tokens dropped).

{learned}

## Retrained under a fixed schedule (PoWER-BERT's last step): every run tried

`econlm train --token-budget S` fine-tunes a model with the schedule in force in every pass (the kept tokens
are gathered, so gradients flow through what the later layers ran on), distilled from the fine-tune it started
from at full length (prediction layer; the same teacher as the learned thresholds), and saves the schedule
with the checkpoint (`token_schedule.json`), which then always runs with it. Run by
`bench/run_tokens_retrain.sh S SEED`; scores and MACs as `econlm train` measured them at the end (dev split).

{retrained_table}

## Targets

{verdicts}

## Reading

{reading}
"""
    save(f"tokens_{task}", {"task": task, "rows": rows, "state": state}, markdown)


def _model_list(state: dict) -> str:
    """Each model's name and the folder it was read from (a trial's folder names its run); a retired one says so."""
    retired = set(state.get("retired", ()))

    def where(folder: str) -> str:
        path = Path(folder)
        return f"{path.parent.name}/{path.name}" if path.name in ("model", "compact") else path.name

    return ", ".join(
        f"`{n}` = `{where(f)}`" + (" (retired: that folder was trained again in place)" if n in retired else "")
        for n, f in state["models"].items()
    )


def _per_fine_tune(rows: list[dict], state: dict) -> str:
    """The post-hoc schedules on every dense fine-tune scored (seeds, and the same seed trained again), side by
    side: what each loses against its own full length, and the mean and spread over the fine-tunes."""
    dense = sorted({r["model"] for r in rows if r["levers"] in ("none", "tokens") and r["against"] == r["model"]})
    if len(dense) < 2:
        return ""
    by = {(r["model"], r["schedule"]): r for r in rows}
    schedules = [s for s in SCHEDULES if s != "full" and all((m, s) in by for m in dense)]
    cells = []
    for schedule in schedules:
        lost = [by[(m, schedule)]["lost"] * 100 for m in dense]
        fast = [by[(m, schedule)].get("speedup_dev_b32") for m in dense]
        fast = [f for f in fast if f]
        mean = sum(lost) / len(lost)
        std = (sum((x - mean) ** 2 for x in lost) / (len(lost) - 1)) ** 0.5
        cells.append(
            [schedule, *(f"{x:+.2f}" for x in lost), f"{mean:+.2f} ± {std:.2f}"]
            + [f"{sum(fast) / len(fast):.2f}x ({len(fast)})" if fast else "-"]
        )
    full = ", ".join(f"{m} {by[(m, 'full')]['score']:.4f}" for m in dense if (m, "full") in by)
    folders = state["models"]
    twice = [(a, b) for i, a in enumerate(dense) for b in dense[i + 1 :] if a in folders and folders[a] == folders.get(b)]
    full += "".join(f"; {a} and {b} are one trial (recipe and seed) trained twice in the same folder" for a, b in twice)
    table = markdown_table(
        ["token schedule", *(f"{m}: points lost" for m in dense), "mean ± std", "speedup dev_b32, mean (models timed)"],
        cells,
    )
    return (
        f"\n### Post hoc on each fine-tune\n\nEvery dense fine-tune scored here, each against its own full length "
        f"({full}); the spread over fine-tunes is what a schedule's loss means on this task.\n\n{table}\n"
    )


def _reading(state: dict, rows: list[dict], first: str) -> str:
    """What the numbers say, each figure read from them."""
    lines = []
    mine = {r["schedule"]: r for r in rows if r["model"] == first}
    early = [r for s, r in mine.items() if s not in ("full",) and not s.startswith("1,")]
    gentle = [r for s, r in mine.items() if s.startswith("1,")]
    if early and gentle:
        least = min(early, key=lambda r: r["lost"])
        best = min(gentle, key=lambda r: r["lost"])
        lines.append(
            f"- Post hoc, with no retraining, the fine-tuned model pays quickly for tokens dropped early: every "
            f"schedule that drops after the first layer loses at least {least['lost'] * 100:.2f} points "
            f"({least['schedule']}, block MACs x{least['macs_share']:.3f}), while keeping every token through the "
            f"first layer and dropping gently after it "
            + (
                f"costs {best['lost'] * 100:.2f} points"
                if best["lost"] >= 0
                else f"scores {-best['lost'] * 100:.2f} points above the full model"
            )
            + f" at x{best['macs_share']:.3f} ({best['schedule']})."
            + (
                " A schedule above the full model measures the dev split's noise at this metric, not a gain."
                if best["lost"] < 0
                else ""
            )
            + (
                f" {state['task']}'s dev examples are short ({state['mean_tokens']:.1f} real tokens on average), so a "
                "small share of tokens is already a large share of the content."
                if state.get("mean_tokens")
                else ""
            )
        )
    full = {r["model"]: r["score"] for r in rows if r["schedule"] == "full"}
    same = "1,0.9,0.8,0.7,0.6,0.6"
    compacted = [r for r in rows if r["schedule"] == same and r["levers"] == "units + tokens" and r["model"] in full]
    if same in mine and compacted:
        own = ", ".join(f"{r['model']} {(full[r['model']] - r['score']) * 100:.2f}" for r in compacted)
        dense_loss = full[first] - mine[same]["score"]
        fragile = all(full[r["model"]] - r["score"] > dense_loss for r in compacted)
        lines.append(
            f"- Under the same schedule ({same}) the dense model loses {dense_loss * 100:.2f} points, the compacted "
            f"ones (against their own full score) {own}."
            + (
                " Compacted models are more fragile: units removed for a price leave fewer redundant heads to carry "
                "dropped tokens' content."
                if fragile
                else ""
            )
        )
    curve = state.get("length_curve")
    if curve:
        share = curve["share_of_longest"]
        lines.append(
            f"- At batch 1 the model's time hardly falls with length on short inputs. On random rows (the full model, "
            f"batch 1, interleaved, {curve['repeats']} rounds) 16 tokens take {share['16'] / share['32']:.0%} of the "
            f"time of 32, and 8 tokens {share['8'] / share['16']:.0%} of the time of 16, while 64 tokens take "
            f"{share['64']:.0%} of the time of 128. Below about 32 tokens every layer costs the fixed price of "
            "launching its operations, whatever the tokens; PoWER-BERT and LTP measured their speedups on rows "
            "padded to 128 tokens, where the time does follow the tokens."
        )
    timed = [r for r in mine.values() if r["schedule"] != "full" and r.get("speedup_dev_b1")]
    if timed and all(r["speedup_dev_b1"] < 1 for r in timed):
        lo, hi = min(r["speedup_dev_b1"] for r in timed), max(r["speedup_dev_b1"] for r in timed)
        line = (
            f"- At batch 1 on real dev examples no timed schedule is faster than the full model ({lo:.2f}x to "
            f"{hi:.2f}x): ranking and gathering the kept tokens after each layer costs more than the few tokens it "
            "drops save" + (", since short rows barely cost less than long ones (above)" if curve else "")
        )
        wide = [r for r in timed if r.get("speedup_synthetic_b32_s128")]
        if wide:
            top = max(wide, key=lambda r: r["speedup_synthetic_b32_s128"])
            line += (
                f"; on a batch of 32 full 128-token rows the same rule pays ({top['schedule']}: "
                f"{top['speedup_synthetic_b32_s128']:.2f}x)"
            )
        lines.append(line + ".")
    lines += _tokens_on_units(rows, first)
    lines += _retrained_reading(state, rows)
    runs = state.get("learned_runs", {})
    old = [r for r in runs.values() if r["format"] == 1]
    new = [r for r in runs.values() if r["format"] == 2 and _same_run(r["init"], state["models"][first])]
    if old:
        r = old[0]
        lines.append(
            f"- The first learned thresholds (format 1, values against all the attention) emptied the sequence: at "
            f"budget {r['settings']['budget']} the layers ran on {', '.join(f'{t:.1f}' for t in r['tokens_per_layer'])} "
            f"tokens and scored {r['score']:.4f}. [CLS] and [SEP] absorb most attention in late layers, so every "
            "other value sank below the threshold together. Format 2 measures values among the droppable tokens."
        )
    if new:
        best = max(new, key=lambda r: r["score"])
        near = min(
            (r for r in mine.values() if r["schedule"] != "full" and r.get("macs_share")),
            key=lambda r: abs(r["macs_share"] - best["macs_ratio"]),
            default=None,
        )
        text = (
            f"- The best learned run so far (format 2, budget {best['settings']['budget']}, {best['steps']} steps from "
            f"the fine-tune) scores {best['score']:.4f} at block MACs x{best['macs_ratio']:.3f}"
        )
        if near is not None:
            text += (
                f"; the post-hoc schedule nearest in MACs ({near['schedule']}, x{near['macs_share']:.3f}) scores "
                f"{near['score']:.4f}"
            )
            text += (
                ". Learning where to drop beats a fixed schedule at equal MACs"
                if best["score"] > near["score"]
                else ". The fixed schedule is as good or better at equal MACs"
            )
        lost = full[first] - best["score"] if first in full else None
        if lost is not None and lost > 0.005:
            text += (
                f". After {best['settings']['epochs']:g} epoch(s) of threshold training it is {lost * 100:.2f} points "
                "below the fine-tune; LTP trains its thresholds and then fine-tunes for several epochs each"
            )
        lines.append(text + ".")
    if new:
        dense = {r["model"] for r in rows if r["schedule"] == "full" and r["levers"] == "none"}
        lines += _other_seeds(runs, state, {m: v for m, v in full.items() if m in dense}, first, best)
    for name, r in runs.items():
        if set(r.get("cost") or ()) & {"flops", "latency"}:
            lines.append(_one_market(name, r, full.get(first)))
    both = [r for r in runs.values() if r["format"] == 2 and not _same_run(r["init"], state["models"][first])]
    for r in both:
        units_alone = next((full[n] for n, f in state["models"].items() if _same_run(f, r["init"]) and n in full), None)
        text = (
            f"- Both levers learned: thresholds trained on a compacted model ({Path(r['init']).parent.name}, "
            f"{r['steps']} steps, budget {r['settings']['budget']}) scored {r['score']:.4f} at block MACs "
            f"x{r['macs_ratio']:.3f} of that model's"
        )
        if units_alone is not None:
            text += f", against {units_alone:.4f} for the units alone" + (
                "; on this task the two levers did not compose with this little training"
                if units_alone - r["score"] > 0.01
                else ""
            )
        lines.append(text + ".")
    return "\n".join(lines) if lines else "Nothing measured yet."


def _tokens_on_units(rows: list[dict], first: str, loss: float = 0.01) -> list[str]:
    """On each compacted model, at batch 1 and at batch 32 on real dev examples, whether the post-hoc token
    schedules that cost at most ``loss`` (against that model's own full score) add speed to what the units
    bought, timed in the same run as the units alone: one line of reading and a table."""
    points = f"{loss * 100:g} point{'s' if loss != 0.01 else ''}"
    cells, slower, total = [], 0, 0
    for name in sorted({r["model"] for r in rows} - {first}):
        own = {r["schedule"]: r for r in rows if r["model"] == name}
        full = own.get("full")
        if not full or full["levers"] != "units":
            continue
        for case, batch in (("dev_b1", 1), ("dev_b32", 32)):
            key = f"speedup_{case}"
            if not full.get(key):
                continue
            timed = [
                r
                for s, r in own.items()
                if s != "full"
                and r.get(key)
                and full.get(f"timed_{case}") is not None
                and r.get(f"timed_{case}") == full.get(f"timed_{case}")
                and full["score"] - r["score"] <= loss
            ]
            if not timed:
                continue
            best = max(timed, key=lambda r: r[key])
            total += 1
            slower += best[key] < full[key]
            cells.append(
                [name, batch, f"{full[key]:.2f}x", f"{best[key]:.2f}x", best["schedule"], f"x{best['token_macs_ratio']:.3f}"]
            )
    if not cells:
        return []
    line = (
        f"- Tokens on compacted models: the fastest token schedule that costs a compacted model at most {points} "
        f"(against its own full score), timed in the same run as the model alone, was slower than the units alone "
        f"in {slower} of {total} cases."
    )
    if slower:
        line += (
            f" Within {points} only gentle schedules qualify (they keep the block MACs share in the last column), and "
            "ranking and gathering the kept tokens cost more than the little they save: the layers a schedule "
            "shortens are cheaper after compaction, the ranking and gathering are not."
        )
    table = markdown_table(
        ["compacted model", "batch", "units alone", f"with tokens (<= {points})", "schedule", "block MACs kept"], cells
    )
    return [line, "", table, ""]


def _other_seeds(runs: dict, state: dict, full: dict, first: str, best: dict) -> list[str]:
    """The learned runs with the best run's settings started from another dense fine-tune (another seed's; ``full``
    holds the dense models' full scores, so a run started from a compacted model is left out), each against that
    fine-tune's full score: whether the first seed's result repeats."""
    lines = []
    for name, r in runs.items():
        same_settings = r["settings"] | {"seed": 0} == best["settings"] | {"seed": 0}
        other_seed = r["settings"]["seed"] != best["settings"]["seed"]
        if r["format"] < 2 or r.get("cost") not in (None, ["tokens"]) or not (same_settings and other_seed):
            continue
        start = next((m for m, folder in state["models"].items() if _same_run(folder, r["init"])), None)
        if start is None or start == first or start not in full:
            continue
        lines.append(
            f"- The same settings on seed {r['settings']['seed']}'s fine-tune ({name}, from {start}) score "
            f"{r['score']:.4f} at block MACs x{r['macs_ratio']:.3f}, {(full[start] - r['score']) * 100:.2f} points "
            f"below that fine-tune ({full[start]:.4f}); seed {best['settings']['seed']}'s run is "
            f"{(full[first] - best['score']) * 100:.2f} below its own."
        )
    return lines


def _same_run(folder: str, other: str) -> bool:
    """Two paths to the same trained model: a trial's folder and model/ name it wherever the benchmark folder
    was (a later session trains the same trial again into another one)."""
    return Path(folder).parts[-2:] == Path(other).parts[-2:]


def _one_market(name: str, r: dict, reference: float | None) -> str:
    """A run whose gates and thresholds learned under one price (``--cost flops,tokens``): which lever the
    market bought its budget with."""
    gates = r.get("gates") or {}
    heads, neurons = gates.get("heads", {}), gates.get("neurons", {})
    lever = _lever(r)
    lost = f" ({(reference - r['score']) * 100:.2f} points lost)" if reference is not None else ""
    share = r.get("share_final")
    cleared = (
        f"The price cleared the budget (share {share:.3f} at the last step against {r['settings']['budget']})"
        if share is not None and share <= r["settings"]["budget"] + 0.01
        else f"Against a budget of {r['settings']['budget']}"
    )
    return (
        f"- One market for both levers ({name}: `--cost {','.join(r['cost'])}`, budget "
        f"{r['settings']['budget']}, {r['steps']} steps from the fine-tune, gates started {r.get('gate_init', 'open')}"
        f"). {cleared}, and it bought it {lever}: the layers ran on "
        f"{', '.join(f'{t:.1f}' for t in r['tokens_per_layer'])} tokens (block MACs x{r['macs_ratio']:.3f} from "
        f"tokens alone), while the gates shut {heads.get('closed', 0)} of {heads.get('total', 0)} heads and "
        f"{neurons.get('closed', 0)} of {neurons.get('total', 0)} neurons (their expected share of the units' "
        f"compute: {gates.get('expected_compute_share', float('nan')):.3f}). It scored {r['score']:.4f}{lost}."
        + (
            " One threshold moves the cost of every later layer for every token, so a step of the price moves the "
            "share far more through the thresholds than through any gate: one price cleared the market through the "
            "lever that answers fastest, not through the one that costs the least score. Pricing both goods in one "
            "market needs their responses put on one footing first (the thresholds' learning rate, or a budget per "
            "lever)."
            if lever == "mostly with tokens"
            else ""
        )
    )


def _lever(r: dict) -> str:
    """Which lever cut more of the blocks' compute: the tokens' MACs ratio against the gates' share."""
    units = (r.get("gates") or {}).get("expected_compute_share")
    if units is None:
        return "with both levers"
    return "mostly with tokens" if r["macs_ratio"] < units else "mostly with units"


def _retrained_reading(state: dict, rows: list[dict]) -> list[str]:
    """Each schedule fine-tuned under: what retraining recovered of what the schedule cost post hoc, across
    seeds, and what it runs at on real dev batches."""
    runs = state.get("retrained_runs", {})
    lines = []
    for schedule in sorted({r["schedule"] for r in runs.values()}):
        mine = {n: r for n, r in runs.items() if r["schedule"] == schedule}
        parts = []
        for name, r in sorted(mine.items(), key=lambda item: item[1]["seed"]):
            base = state["scores"].get(f"{r['init_model']}|full", {}).get("score")
            posthoc = state["scores"].get(f"{r['init_model']}|{schedule}", {}).get("score")
            if base is None or posthoc is None:
                continue
            row = next((x for x in rows if x["model"] == name), {})
            speed = ", ".join(
                f"{row[f'speedup_{c}']:.2f}x {c.removeprefix('speedup_')}"
                for c in ("dev_b1", "dev_b32")
                if row.get(f"speedup_{c}")
            )
            recovered = (r["score"] - posthoc) / (base - posthoc) if base > posthoc else float("nan")
            parts.append(
                f"seed {r['seed']}: {(base - posthoc) * 100:.2f} points lost post hoc, {(base - r['score']) * 100:.2f} "
                f"after {r['steps']} steps under it ({recovered:.0%} of the loss recovered"
                + (f"; {speed}" if speed else "")
                + ")"
            )
        if parts:
            macs = sum(r["macs_ratio"] for r in mine.values()) / len(mine)
            lines.append(
                f"- Fine-tuned under {schedule} (block MACs x{macs:.3f}), against the fine-tune it started from: "
                + "; ".join(parts)
                + "."
            )
    if lines:
        lines.append(
            "- Retraining under a fixed schedule recovers a part of what the schedule costs, not all of it: on "
            f"{state['task']}'s short examples ({state.get('mean_tokens', 0):.1f} real tokens on average) the tokens a "
            "schedule of this size drops carry content the score needs, and three epochs of distillation do not teach "
            "the model to do without it. PoWER-BERT's 2x on STS-B at 0.7 points lost was measured on sequences padded "
            "to 128 tokens; at this split's mean real length most of such a row is padding, which a batch here never "
            "computes and a token budget here is never credited with dropping."
        )
    return lines


def _against(state: dict, model: str, first: str) -> str:
    """The model whose full-length score ``model`` loses against: the one a retrained run was fine-tuned from;
    the one named for it with ``score --against``; a dense fine-tune of another seed, itself; a compacted model named ``...-sN``, the fine-tune of seed N
    (``<first>-sN``); anything else (the compacted seed-1 models), ``first``."""
    init = state.get("retrained_runs", {}).get(model, {}).get("init_model")
    if f"{init}|full" in state["scores"]:
        return init
    named = state.get("references", {}).get(model)  # score --against: the teacher of the model's own run
    if named is not None:
        return named
    own, reference = state["scores"].get(f"{model}|full"), state["scores"][f"{first}|full"]
    dense = own is not None and (own["heads"], own["ffn"]) == (reference["heads"], reference["ffn"])
    if dense:
        return model
    seed = re.search(r"-s(\d+)$", model)  # a compacted model of another seed: that seed's fine-tune
    if seed and f"{first}-s{seed.group(1)}|full" in state["scores"]:
        return f"{first}-s{seed.group(1)}"
    return first


def _retrained_table(runs: dict, state: dict) -> str:
    if not runs:
        return "None run yet."
    rows = []
    for name, r in runs.items():
        base = state["scores"].get(f"{r['init_model']}|full", {}).get("score")
        posthoc = state["scores"].get(f"{r['init_model']}|{r['schedule']}", {}).get("score")
        rows.append(
            [
                name,
                r["init_model"],
                r["schedule"],
                r["seed"],
                f"{r['epochs']:g}",
                r["steps"],
                f"{r['seconds'] / 60:.0f} min",
                "-" if base is None else f"{base:.4f}",
                "-" if posthoc is None else f"{posthoc:.4f}",
                f"{r['score']:.4f}",
                "-" if base is None else f"{(base - r['score']) * 100:+.2f}",
                f"{r['macs_ratio']:.3f}",
                ", ".join(f"{t:.1f}" for t in r["tokens_per_layer"]),
            ]
        )
    return markdown_table(
        [
            "run",
            "started from (and teacher)",
            "schedule",
            "seed",
            "epochs",
            "steps",
            "training time (wall, 1 thread, cores shared)",
            "start at full length",
            "start under the schedule, post hoc",
            "retrained under the schedule",
            "points lost",
            "block MACs ratio",
            "tokens per layer",
        ],
        rows,
    )


def _learned_table(runs: dict) -> str:
    if not runs:
        return "None run yet."
    return markdown_table(
        [
            "run",
            "format",
            "budget",
            "price_lr",
            "epochs",
            "steps",
            "score",
            "block MACs ratio",
            "tokens per layer",
            "final lambda",
        ],
        [
            [
                name,
                r["format"],
                r["settings"]["budget"],
                r["settings"]["price_lr"],
                r["settings"]["epochs"],
                r["steps"],
                f"{r['score']:.4f}",
                f"{r['macs_ratio']:.3f}",
                ", ".join(f"{t:.1f}" for t in r["tokens_per_layer"]),
                f"{r['lambda_final']:.2f}",
            ]
            for name, r in runs.items()
        ],
    )


def _levers(entry: dict, reference: dict) -> str:
    units = (entry["heads"], entry["ffn"]) != (reference["heads"], reference["ffn"])
    tokens = entry["schedule"] != "full"
    return {(False, False): "none", (True, False): "units", (False, True): "tokens"}.get(
        (units, tokens), "units + tokens"
    )


def _targets(rows: list[dict], first: str, timing: dict) -> str:
    """Each target on each real-dev-batch case timed (batch 1 and 32: the issue's "real dev batches")."""
    cases = [c for c in ("dev_b1", "dev_b32") if c in timing] or list(timing)[:1]
    if not cases:
        return "Not timed yet."
    lines = []
    for case in cases:
        lines.append(_target_line(rows, case, "tokens", "Tokens alone", 1.5, 0.005))
        lines.append(_target_line(rows, case, "units + tokens", "Units + tokens", 3.0, 0.01))
    return "\n".join(lines)


def _target_line(rows: list[dict], case: str, levers: str, name: str, speedup: float, loss: float) -> str:
    """The fastest row of ``levers`` within ``loss`` of the reference, against the ``speedup`` target."""
    what = f"- {name}, >= {speedup:g}x at <= {loss * 100:g} point{'s' if loss != 0.01 else ''} lost ({case})"
    timed = [r for r in rows if r["levers"] == levers and r.get(f"speedup_{case}")]
    if not timed:
        return f"{what}: **not measured**: no model of this task was timed with these levers"
    best = max((r for r in timed if r["lost"] <= loss), key=lambda r: r[f"speedup_{case}"], default=None)
    if best is None:
        return f"{what}: **missed**: none timed loses <= {loss * 100:g} points"
    key = f"speedup_{case}"
    hit = best[key] >= speedup
    model = f"{best['model']} with " if levers != "tokens" else ""
    line = f"best {model}{best['schedule']} at {best[key]:.2f}x, {best['lost'] * 100:+.2f} points"
    if levers == "units + tokens":
        # The issue asks for both levers above the best single lever on the frontier: a units model that is
        # faster without its tokens makes the pair no better than one lever, whatever its speed.
        single = max(
            (
                r
                for r in rows
                if r["levers"] in ("units", "tokens")
                and r.get(key)
                and r["lost"] <= loss
                and r.get(f"timed_{case}") is not None
                and r.get(f"timed_{case}") == best.get(f"timed_{case}")
            ),
            key=lambda r: r[key],
            default=None,
        )
        if single is not None:
            above = best[key] > single[key]
            hit = hit and above
            line += (
                f"; the best single lever timed in the same run, {single['model']} "
                + ("alone" if single["levers"] == "units" else f"with {single['schedule']}")
                + f", runs at {single[key]:.2f}x ({single['lost'] * 100:+.2f} points): both levers "
                + ("above it" if above else "**not above it**")
            )
        elif hit:
            return f"{what}: **met on speed only** (no single lever within the loss timed in the same run): {line}"
    return f"{what}: **{'met' if hit else 'missed'}**: {line}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    s = sub.add_parser("score")
    s.add_argument("task")
    s.add_argument("--model", action="append", default=[], help="NAME=DIR; the first is the reference")
    s.add_argument(
        "--against", action="append", default=[], help="MODEL=TEACHER: MODEL loses against, and is timed against, TEACHER"
    )
    s.add_argument(
        "--retire", action="append", default=[], help="NAME: its folder now holds another model; keep its numbers only"
    )
    t = sub.add_parser("time")
    t.add_argument("task")
    t.add_argument("--repeats", type=int, default=20)
    t.add_argument("--schedules", help="comma-free list separated by ';' (default: all)")
    t.add_argument("--fresh", action="store_true", help="time every model whose folder is here again (the others keep their timings)")
    r = sub.add_parser("learned")
    r.add_argument("task")
    r.add_argument("folders", nargs="+", help="econlm train --cost tokens output folders")
    d = sub.add_parser("docs")
    d.add_argument("task")
    d.add_argument("--conditions", help="what else ran on the machine while timing (kept in the state)")
    args = parser.parse_args()
    if args.step == "score":
        pairs = [p for p in args.model + args.against if "=" not in p]
        if pairs:
            parser.error(f"'{pairs[0]}' is not NAME=VALUE")
        score(args.task, dict(m.split("=", 1) for m in args.model), dict(a.split("=", 1) for a in args.against), args.retire)
    elif args.step == "learned":
        record_learned(args.task, args.folders)
    elif args.step == "time":
        timing(args.task, args.repeats, args.schedules.split(";") if args.schedules else None, args.fresh)
    else:
        docs(args.task, args.conditions)


if __name__ == "__main__":
    main()
