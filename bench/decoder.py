"""Issue #12's benchmark tables: SmolLM2-135M on WikiText, from bench/run_decoder.sh's sweep.

    python bench/decoder.py score [--test-tokens 8192]    # WikiText-103 test perplexity of every model (resumable)
    python bench/decoder.py time [--repeats 10]           # prefill and generation, interleaved, on a quiet machine
    python bench/decoder.py docs                          # bench/results/decoder.json and docs/decoder.md

The models: the pretrained SmolLM2, the lambda = 0 fine-tune on the sweep's training tokens (the reference),
every compacted incentive model and every post-hoc rival. Each is loaded back from its saved folder with
`econlm.load`'s loader (so the saved compacted models really reload), scored on the first --test-tokens tokens
of WikiText-103 test with the probe's sliding window (256-token windows, stride 128: past the first window,
each scored token sees at least 128 tokens of context), counted (dense MACs per token of a 256-token sequence, parameters) and asked for a
greedy continuation of one test prompt. `time` times every distinct structure once, all of them interleaved
round by round: prefill (batch 1, 512 tokens) and greedy generation of 128 new tokens with the KV cache at
batch 1 and 8. A rival pruned to the same per-layer heads, K/V groups and FFN widths as the incentive model it
matches runs the same shapes, so it shares that structure's timing. State: <out>/decoder_bench.json, saved
after every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, ROOT, markdown_table, save  # noqa: E402

from econlm.sweep import _is_plain  # noqa: E402 - a plain fine-tune: no price, no gates (the reference)

THREADS = 2
WINDOW = 256  # the sweep's --max-length: training blocks and scoring windows
PREFILL, NEW_TOKENS, DECODE_BATCHES = 512, 128, (1, 8)
PROMPT = " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor ."
# Issue #12's targets: >= 30% fewer FLOPs with >= 1.3x decode throughput at batch 1, <= +10% test perplexity.
TARGET_FLOPS_CUT, TARGET_DECODE, TARGET_PPL = 0.30, 1.3, 0.10
# FLAP (retraining-free, LLaMA-7B, WikiText-2): 12.62 dense; 14.62 / 17.62 / 31.80 at 20 / 30 / 50% removed.
FLAP = {0.2: 14.62, 0.3: 17.62, 0.5: 31.80}
FLAP_DENSE = 12.62
COLLAPSED = 1e4  # a perplexity past this is a collapsed model: named in the figure, drawn at its top edge
STAGE_OF_BUDGET = {0.6: "stage 2", 0.4: "stage 3", 0.8: "stage 4"}  # bench/run_decoder.sh's order (recovery)
NO_RECOVERY_STAGE = {0.6: "stage 1", 0.4: "stages 3 and 6", 0.8: "stages 4 and 6"}  # magnitude is stage 6's


def folder() -> Path:
    return Path(os.environ.get("ECONLM_BENCH_OUT", ROOT / "runs" / "bench")) / "decoder"


def load_results() -> list[dict]:
    path = folder() / "results.jsonl"
    if not path.exists():
        raise SystemExit(f"no results in {folder()}; run bench/run_decoder.sh first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("status") == "ok" and r["kind"] in ("train", "posthoc")]
    if len({r["settings"]["seed"] for r in rows}) > 1:
        raise SystemExit("this summary reads one seed; give each seed its own folder")
    return rows


def _state_path() -> Path:
    return folder() / "decoder_bench.json"


def load_state() -> dict:
    path = _state_path()
    return json.loads(path.read_text()) if path.exists() else {"models": {}, "timing": None}


def save_state(state: dict) -> None:
    from econlm.runinfo import write_json

    write_json(_state_path(), state)


GATED_PART = {"attention": "K/V groups", "ffn": "FFN neurons"}


def _is_ablation(settings: dict) -> bool:
    """A training of stage 5 (decoder_wikitext2_ablation.yaml): gates on one component, or a tax without gates."""
    return not _is_plain(settings) and (
        "flops" not in settings.get("cost", ()) or settings.get("target", "both") != "both"
    )


def label(r: dict, budgets: dict[str, float] | None = None) -> str:
    s = r["settings"]
    if r["kind"] == "train":
        if _is_plain(s):
            return "lambda=0 fine-tune"
        if "flops" not in s.get("cost", ()):
            return f"{' + '.join(s['cost'])} tax ({s.get('cost_reduction', 'mean')}), lambda {s['lam']:g}"
        part = GATED_PART.get(s.get("target", "both"))
        return f"incentive flops{f' on {part} only' if part else ''}, budget {s['budget']}"
    recovery = "same recovery tokens" if s.get("finetune_epochs") else "no recovery"
    at = (budgets or {}).get(s.get("matches"))
    return f"post-hoc {s['importance']}" + (f" at the {at} structure" if at is not None else "") + f", {recovery}"


def models_of(results: list[dict]) -> dict[str, dict]:
    """name -> what the tables need to know about one model (its folder, how it was made, its sweep score)."""
    models = {"pretrained": {"path": "smollm2", "method": "pretrained SmolLM2-135M-Instruct", "kind": "pretrained"}}
    budgets = {r["id"]: r["settings"].get("budget") for r in results if r["kind"] == "train"}
    for r in results:
        name = "lambda0" if r["kind"] == "train" and _is_plain(r["settings"]) else r["id"]
        models[name] = {
            "path": r["final_model"],
            "method": label(r, budgets),
            "kind": "reference" if name == "lambda0" else "ablation" if _is_ablation(r["settings"]) else r["kind"],
            "id": r["id"],
            "budget": r["settings"].get("budget"),
            "matches": r["settings"].get("matches"),
            "recovery": bool(r["settings"].get("finetune_epochs")),
            "training_steps": r["training"]["steps"],
            "training_seconds": r["training"]["seconds"],
            "train_seconds_own": r.get("train_seconds"),
            "lambda_final": r.get("lambda_final") if r["kind"] == "train" else None,
            "gates": r.get("gates") if r["kind"] == "train" else None,
            "settings": r["settings"],
            "removed": ((r.get("compact") or {}).get("removed") or {}) if r["kind"] == "train" else None,
            "sparsity": r.get("sparsity") if r["kind"] == "train" else None,
            "cost_terms_last_step": _last_step_terms(r) if r["kind"] == "train" else None,
        }
    return models


def _last_step_terms(result: dict) -> dict | None:
    """The loss terms of a training's last step (metrics.json), to weigh a tax against the task loss."""
    path = Path(result["final_model"]) / "metrics.json"
    return json.loads(path.read_text()).get("cost_terms_last_step") if path.exists() else None


def _ordered(rows: list[dict]) -> list[dict]:
    """The pretrained model and the reference, then each incentive model (largest budget first) followed by
    the rivals at its structure (no recovery first)."""
    first = [r for r in rows if r["kind"] in ("pretrained", "reference")]
    ordered = sorted(first, key=lambda r: r["kind"] != "pretrained")
    for inc in sorted((r for r in rows if r["kind"] == "train"), key=lambda r: -(r["budget"] or 0)):
        ordered.append(inc)
        rivals = [r for r in rows if r["kind"] == "posthoc" and r["matches"] == inc["id"]]
        ordered += sorted(rivals, key=lambda r: (r["recovery"], r["method"]))
    return ordered + [r for r in rows if r not in ordered]


def _structure_key(structure) -> str:
    return json.dumps({"heads": structure.heads, "kv_heads": structure.kv_heads, "ffn": structure.ffn})


def score(test_tokens: int) -> None:
    """Perplexity, MACs, parameters and a greedy continuation of every model not yet measured."""
    import torch

    from econlm.flops import Structure, dense_macs
    from econlm.models import load_model
    from econlm.probing import ProbeConfig, run_probe

    torch.set_num_threads(THREADS)
    state = load_state()
    current = models_of(load_results())
    for gone in set(state["models"]) - set(current):  # no longer in the sweep's results
        del state["models"][gone]
    for name, info in current.items():
        done = state["models"].get(name)
        if done and done.get("test_tokens") == test_tokens and done.get("path") == info["path"]:
            done.update(info)  # what the sweep says about it may have grown (a rival's results, say)
            save_state(state)
            continue
        loaded = load_model(info["path"])
        model = loaded.model.eval()
        probe = run_probe(
            ProbeConfig(
                model=info["path"],
                task="wikitext103",
                split="test",
                budgets=("full",),
                limit=test_tokens,
                max_length=WINDOW,
                data_dir=DATA,
            ),
            model=loaded,
            progress=True,
        )
        structure = Structure.of_model(model)
        macs = dense_macs(structure, WINDOW, include_head=True)
        ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        state["models"][name] = {
            **info,
            "test_tokens": test_tokens,
            "wikitext103_test_ppl": probe.rows[0]["score"],
            "macs_per_token": macs["macs"] / WINDOW,
            "parameters": sum(p.numel() for p in model.parameters()),  # tied embeddings counted once
            "embedding_parameters": model.get_input_embeddings().weight.numel(),
            "structure": json.loads(_structure_key(structure)),
            "continuation": loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True),
        }
        save_state(state)
        print(f"{name}: perplexity {probe.rows[0]['score']:.3f}", flush=True)


def time_structures(repeats: int) -> None:
    """Prefill and generation of every distinct structure, interleaved round by round in one run."""
    import torch

    from econlm.compact import CompactConfig, measure_decoding
    from econlm.models import load_model

    torch.set_num_threads(THREADS)
    state = load_state()
    by_structure: dict[str, str] = {}  # structure -> the model timed for it (the first one with it)
    for name, info in state["models"].items():
        if name != "pretrained":  # the pretrained model has the reference's shapes
            by_structure.setdefault(json.dumps(info["structure"]), name)
    timed = {name: load_model(state["models"][name]["path"]).model.eval() for name in by_structure.values()}
    load_before = os.getloadavg()[0]
    config = CompactConfig(
        checkpoint="unused",
        out="unused",
        latency_repeats=repeats,
        prefill_length=PREFILL,
        decode_tokens=NEW_TOKENS,
        decode_batches=DECODE_BATCHES,
    )
    results = measure_decoding(timed, config)
    if state.get("timing"):  # earlier runs are kept: their spread says how far one run's ratios can be trusted
        state.setdefault("timing_history", []).append(state["timing"])
    state["timing"] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "by_model": results,
        "structure_of": {json.dumps(state["models"][n]["structure"]): n for n in timed},
        "repeats": repeats,
        "load_average": [load_before, os.getloadavg()[0]],
    }
    save_state(state)


def rows_of(state: dict) -> list[dict]:
    timing = state["timing"]
    reference = state["models"].get("lambda0")
    if reference is None or json.dumps(reference["structure"]) not in timing["structure_of"]:
        raise SystemExit("the lambda = 0 fine-tune is not scored and timed yet: run `score`, then `time`")
    rows = []
    for name, info in state["models"].items():
        timed_as = timing["structure_of"].get(json.dumps(info["structure"]))
        row = {
            "name": name,
            **{k: info.get(k) for k in ("method", "kind", "id", "budget", "matches", "recovery", "training_steps")},
            "training_seconds": info.get("training_seconds"),
            "ppl": info["wikitext103_test_ppl"],
            "ppl_increase": info["wikitext103_test_ppl"] / reference["wikitext103_test_ppl"] - 1,
            "flops_share": info["macs_per_token"] / reference["macs_per_token"],
            "params_share": info["parameters"] / reference["parameters"],
            "block_params_share": (info["parameters"] - info["embedding_parameters"])
            / (reference["parameters"] - reference["embedding_parameters"]),
            "kv_groups": sum(info["structure"]["kv_heads"]),
            "heads": sum(info["structure"]["heads"]),
            "ffn": sum(info["structure"]["ffn"]),
            "timed_as": timed_as,
            "continuation": info["continuation"],
            "sparsity": info.get("sparsity"),
            "cost_terms_last_step": info.get("cost_terms_last_step"),
        }
        row.update(_speed_ratios(timing, info["structure"], reference["structure"]))
        rows.append(row)
    return _ordered(rows)


def _speed_ratios(timing: dict, structure: dict, reference: dict) -> dict:
    """Prefill and decode speedups of ``structure`` over ``reference`` within one timing run ({} if untimed)."""
    timed_as = timing["structure_of"].get(json.dumps(structure))
    if timed_as is None:
        return {}
    t, ref = timing["by_model"][timed_as], timing["by_model"][timing["structure_of"][json.dumps(reference)]]
    ratios = {"prefill_speedup": ref["prefill"]["median"] / t["prefill"]["median"]}
    for b in DECODE_BATCHES:
        key = f"decode_batch{b}"
        ratios[f"decode_b{b}_tokens_per_s"] = t[key]["tokens_per_second"]
        ratios[f"decode_b{b}_speedup"] = t[key]["tokens_per_second"] / ref[key]["tokens_per_second"]
    return ratios


def _run_to_run(state: dict, rows: list[dict]) -> list[str]:
    """The incentive models' speed ratios in every timing run kept, oldest first, so a reader sees how far
    the ratios of one interleaved run move between runs on this machine."""
    runs = state.get("timing_history", []) + [state["timing"]]
    reference = state["models"]["lambda0"]["structure"]
    gated = [r for r in rows if r["kind"] in ("train", "ablation") and r["flops_share"] < 0.999]
    lines, spread = [], 0.0
    for r in gated:
        seen = [_speed_ratios(t, state["models"][r["name"]]["structure"], reference) for t in runs]
        seen = [s for s in seen if s]
        if len(seen) < 2:
            continue
        cells = []
        for key, what in (
            ("prefill_speedup", "prefill"),
            ("decode_b1_speedup", "decode b1"),
            ("decode_b8_speedup", "decode b8"),
        ):
            values = [s[key] for s in seen]
            spread = max(spread, max(values) - min(values))
            cells.append(f"{what} " + " / ".join(f"x{v:.2f}" for v in values))
        lines.append(f"- {r['method']}: {'; '.join(cells)}.")
    if not lines:
        return []
    return [
        f"The same structures were timed in {len(runs)} separate interleaved runs "
        f"({'/'.join(str(t['repeats']) for t in runs)} rounds, the table shows "
        f"the latest). Within a run the models share the machine's state round by round; between runs a ratio "
        f"moved by up to {spread:.2f}, so read the speed columns to about that precision. Each model's ratios, "
        "oldest run first:",
        "",
        *lines,
        "",
    ]


def _incentive_verdicts(rows: list[dict]) -> list[str]:
    lines = []
    for inc in (r for r in rows if r["kind"] == "train"):
        rivals = [r for r in rows if r["kind"] == "posthoc" and r["matches"] == inc["id"]]
        cut = 1 - inc["flops_share"]
        meets = (
            cut >= TARGET_FLOPS_CUT
            and inc.get("decode_b1_speedup", 0) >= TARGET_DECODE
            and inc["ppl_increase"] <= TARGET_PPL
        )
        lines.append(
            f"- {inc['method']}: {cut:.0%} fewer FLOPs, decode x{inc.get('decode_b1_speedup', float('nan')):.2f} at "
            f"batch 1, perplexity {inc['ppl_increase']:+.1%}: target **{'met' if meets else 'missed'}**."
        )
        for recovery in (False, True):
            same = [r for r in rivals if r["recovery"] == recovery]
            if not same:
                continue
            best = min(same, key=lambda r: r["ppl"])
            verdict = "beats" if inc["ppl"] < best["ppl"] else "does not beat"
            lines.append(
                f"  - Against the best rival {'with the same recovery tokens' if recovery else 'with no recovery'} "
                f"({best['method']}, perplexity {best['ppl']:.2f}): incentive {inc['ppl']:.2f} {verdict} it "
                f"({len(same)} {'rival' if len(same) == 1 else 'rivals'} with its heads and neurons per layer; "
                f"{best['training_steps']} training steps in all, the lambda = 0 fine-tune included, against the "
                f"incentive run's {inc['training_steps']})."
            )
    return lines


def _why(state: dict, rows: list[dict]) -> list[str]:
    """Why the incentive models score as they do against the rivals at their structure, from the runs."""
    lines = ["### Why incentive training scores as it does", ""]
    for r in (r for r in rows if r["kind"] in ("train", "ablation")):
        info = state["models"][r["name"]]
        heads = (info.get("gates") or {}).get("heads") or {}
        removed = (info.get("removed") or {}).get("heads", 0)
        if heads.get("closed", 0) > removed and "gate_covers" not in heads:
            lines.append(
                f"- {r['method']}: of the {heads['closed']} query heads its gates closed, {heads['closed'] - removed} "
                "sit in K/V groups whose other heads stayed open, so they were zeroed but not removed: the model lost "
                "their function and got no compute back. A rival at the same realised structure keeps every head "
                "that was not removed."
            )
        gates = info.get("gates") or {}
        share, budget = gates.get("expected_compute_share"), info.get("budget")
        if share is not None and budget is not None and share < budget - 0.02:
            per_layer = heads.get("closed_per_layer", [])
            emptied = sum(1 for closed in per_layer if closed == heads["total"] // max(1, len(per_layer)))
            lines.append(
                f"- {r['method']}: the price overshot. It reached the budget, but the gates lagged it and froze at "
                f"{share:.3f} of the gated FLOPs against {budget}, so the model gave up more than it was asked to"
                + (
                    f"; {emptied} of its {len(per_layer)} layers lost every K/V group (compaction keeps one zero group there, "
                    "so outputs stay exact)"
                    if emptied
                    else ""
                )
                + ". A slower price, or a freeze held until the share settles, would stop nearer the budget."
            )
    settings = next(r for r in state["models"].values() if r["kind"] == "train")["settings"]
    freeze = settings.get("gate_freeze", 0.7)
    steps = next(r for r in rows if r["kind"] == "reference")["training_steps"]
    dense_ffn = next(r for r in rows if r["kind"] == "reference")["ffn"]
    lost = [
        (state["models"][r["name"]].get("removed") or {}).get("neurons", 0) / dense_ffn
        for r in rows
        if r["kind"] == "train"
    ]
    lines += [
        f"- Short training: the gates learn for {freeze:.0%} of the {steps} steps, leaving "
        f"{steps - int(freeze * steps)} steps to recover from losing "
        + " and ".join(f"{share:.0%}" for share in lost)
        + " of the FFN neurons, while a rival prunes a model fine-tuned for all of them (CoFiPruning trains small "
        "tasks for 120 epochs).",
        "- Speed against the FLOPs cut (1 / FLOPs share is the speedup the counted matrix products alone would "
        "give): "
        + "; ".join(
            f"{r['method']} computes {1 - r['flops_share']:.0%} fewer FLOPs (x{1 / r['flops_share']:.2f}) and decodes "
            f"x{r.get('decode_b1_speedup', float('nan')):.2f} as fast at batch 1, "
            f"x{r.get('decode_b8_speedup', float('nan')):.2f} at batch 8 (x{r.get('prefill_speedup', float('nan')):.2f} "
            "prefill)"
            for r in rows
            if r["kind"] == "train"
        )
        + ". Each decoded token also pays per-layer costs the FLOPs do not count (the KV cache, norms, Python "
        "dispatch over 30 layers), which removing heads and neurons does not shrink; where a measured ratio falls "
        "short of the FLOPs ratio, that is the rest. Removing whole layers is what would cut it.",
        "",
    ]
    return lines


EARLIER = ROOT / "bench" / "results" / "decoder_per_head_gates.json"


def _earlier_per_head_run(recipe: dict) -> list[str]:
    """The first run of this benchmark (gates on single query heads, the bug it found), for comparison."""
    if not EARLIER.exists():
        return []
    earlier = json.loads(EARLIER.read_text())
    rows = [r for r in earlier["rows"] if r["kind"] in ("train", "posthoc")]
    table = markdown_table(
        ["model (earlier run)", "recovery", "WT-103 test ppl", "vs lambda=0", "FLOPs share", "decode b1 x"],
        [
            [
                r["method"],
                "-" if r["kind"] == "train" else ("yes" if r["recovery"] else "no"),
                round(r["ppl"], 2),
                f"{r['ppl_increase']:+.1%}",
                round(r["flops_share"], 3),
                round(r["decode_b1_speedup"], 2) if "decode_b1_speedup" in r else "-",
            ]
            for r in rows
        ],
    )
    return [
        "",
        "The first run of this benchmark (git " + earlier["meta"]["git"][:10] + ", raw numbers in "
        "`bench/results/decoder_per_head_gates.json`) gated each query head on its own, with the budget reached at 40% "
        "of the steps and the gates frozen at 70% (price_lr 5). With grouped-query attention only whole K/V groups "
        "can be removed, so a closed head whose group partners stayed open cost the model its function and saved "
        "nothing once compacted; the price cleared compute that compaction could not remove. Gates now cover whole "
        "K/V groups (the share charged is the share the compacted model computes: "
        "`tests/unit/test_compact.py::test_the_flops_price_charges_only_compute_that_compaction_removes`), and the "
        "runs above use them, with the budget reached at "
        f"{recipe.get('budget_warmup', 0):.0%} of the steps and the gates frozen at {recipe.get('gate_freeze', 0.7):.0%} "
        f"(price_lr {recipe.get('price_lr'):g}), so that {1 - recipe.get('gate_freeze', 0.7):.0%} of the steps "
        "recover at a fixed structure. That run, for comparison (its own lambda = 0 reference, same "
        "tokens and scoring):",
        "",
        table,
    ]


def _flap_line(rows: list[dict], steps: int) -> str:
    parts = [f"{share:.0%} removed: {ppl / FLAP_DENSE - 1:+.0%}" for share, ppl in FLAP.items()]
    pretrained = next(r for r in rows if r["kind"] == "pretrained")
    mine = "; ".join(
        f"{r['method']}: {1 - r['block_params_share']:.0%} of the blocks' parameters removed "
        f"({1 - r['params_share']:.0%} of all, the tied embeddings included), perplexity {r['ppl_increase']:+.1%} "
        f"against the lambda = 0 fine-tune and {r['ppl'] / pretrained['ppl'] - 1:+.1%} against the pretrained model"
        for r in rows
        if r["kind"] == "train"
    )
    return (
        "FLAP (retraining-free, LLaMA-7B, WikiText-2 test perplexity 12.62 of the dense pretrained model): "
        + ", ".join(parts)
        + f". econlm here: {mine}. What differs: a 135M model (small models have less redundancy to remove than 7B "
        f"ones); econlm's models learn their structure during {steps} steps of training on WikiText-2 while FLAP "
        "prunes without any training; and the perplexities here are on WikiText-103 test (the same articles, fewer "
        "`<unk>`). The ratio is a reference point, not a like-for-like comparison."
    )


def figure(rows: list[dict]) -> str | None:
    from econlm.plots import _pyplot, save_figure

    plt = _pyplot()
    axes_of = [("flops_share", "dense FLOPs share (per token, 256-token sequence)")]
    axes_of += [("prefill_speedup", "prefill speedup (batch 1, 512 tokens)")]
    axes_of += [("decode_b1_speedup", "decode throughput ratio (batch 1, 128 new tokens)")]
    fig, axes = plt.subplots(1, len(axes_of), figsize=(5 * len(axes_of), 4), sharey=True)
    styles = {
        "train": ("tab:red", "o"),
        "ablation": ("tab:orange", "P"),
        "reference": ("black", "s"),
        "pretrained": ("grey", "D"),
    }
    rival_colours = {"wanda": "tab:brown", "activation": "tab:blue", "magnitude": "tab:green"}
    # A collapsed model (magnitude pruning with no recovery) sits orders of magnitude above the rest: it is
    # drawn at the top edge and named in the caption, so the axis shows where the methods differ.
    kept = [r["ppl"] for r in rows if r["ppl"] < COLLAPSED]
    top = max(kept) * 1.5
    for ax, (key, title) in zip(axes, axes_of, strict=True):
        for r in rows:
            if r.get(key) is None:
                continue
            if r["kind"] == "posthoc":
                importance = r["method"].split()[1].rstrip(",")  # "post-hoc wanda at the ..."
                colour, marker = rival_colours.get(importance, "tab:purple"), "^" if r["recovery"] else "v"
                legend = f"post-hoc {importance}, {'same recovery tokens' if r['recovery'] else 'no recovery'}"
            else:
                colour, marker = styles[r["kind"]]
                if r["kind"] == "ablation":  # one marker per ablated component
                    marker = "P" if "K/V" in r["method"] else "X" if "FFN neurons" in r["method"] else "*"
                legend = r["method"].split(", budget")[0]  # one entry per method, not per budget
            ax.scatter(r[key], min(r["ppl"], top), c=colour, marker=marker, s=50, label=legend)
        ax.set_xlabel(title)
        ax.set_yscale("log")
        ax.set_ylim(top=top)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("WikiText-103 test perplexity (lower is better)")
    collapsed = [r for r in rows if r["ppl"] >= COLLAPSED]
    if collapsed:
        title = "Off the chart, drawn at the top edge: " + "; ".join(
            f"{r['method']} ({r['ppl']:.3g})" for r in collapsed
        )
        fig.suptitle(textwrap.fill(title, 140), fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    fig.subplots_adjust(bottom=0.32)
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=3, fontsize=8)
    path = ROOT / "docs" / "decoder" / "frontier.png"
    path.parent.mkdir(exist_ok=True)
    save_figure(fig, path)
    return "decoder/frontier.png"


def _not_run(rows: list[dict], wall_seconds: float) -> list[str]:
    """What issue #12's benchmark asks for that these runs do not hold, with what each would cost here."""
    lines = ["## Not run yet", ""]
    step_minutes = 16  # one 128-step training with its scoring, measured here
    for inc in (r for r in rows if r["kind"] == "train"):
        for recovery in (False, True):
            # magnitude is given no recovery run: it collapses without one (the no-recovery rows show it)
            expected = {"wanda", "activation"} | (set() if recovery else {"magnitude"})
            missing = expected - {
                r["method"].split()[1].rstrip(",")
                for r in rows
                if r["matches"] == inc["id"] and r["recovery"] == recovery
            }
            if missing:
                stage = STAGE_OF_BUDGET.get(inc["budget"], "a stage")
                what = (
                    f"with recovery training ({stage} of bench/run_decoder.sh)"
                    if recovery
                    else f"with no recovery ({NO_RECOVERY_STAGE.get(inc['budget'], 'stage 1')} of bench/run_decoder.sh)"
                )
                cost = f"about {step_minutes} min each" if recovery else "about 5 min each"
                lines.append(f"- Rivals {what} at {inc['method']}: {', '.join(sorted(missing))} ({cost}).")
    ablation = {r["method"] for r in rows if r["kind"] == "ablation"}
    missing = [m for m in _ablation_methods() if m not in ablation]
    if missing:
        lines.append(
            f"- The attention / FFN / both ablation and the FFN tax at the paper's scale (stage 5 of "
            f"bench/run_decoder.sh, `bench/sweeps/decoder_wikitext2_ablation.yaml`): {'; '.join(missing)} "
            f"(about {2 * step_minutes} min each with compaction and scoring)."
        )
    lines.append(
        f"- A second seed (the issue asks for one where CPU time allows): every training and rival again, about "
        f"{wall_seconds / 3600:.1f} hours on 2 cores by this seed's trial clocks, more than one working session here."
    )
    if not any(r["kind"] == "train" and r["budget"] == 0.4 for r in rows):
        lines.append(
            "- Budget 0.4 and its rivals with and without recovery (stage 3 of bench/run_decoder.sh, "
            "`bench/sweeps/decoder_wikitext2_b04.yaml`): about 75 min."
        )
    if not any(r["kind"] == "train" and r["budget"] == 0.8 for r in rows):
        lines.append(
            "- Budget 0.8 and its rivals with and without recovery (stage 4 of bench/run_decoder.sh, "
            "`bench/sweeps/decoder_wikitext2_b08.yaml`): about 75 min."
        )
    lines.append("")
    return lines


def _ablation_methods() -> list[str]:
    """The labels of stage 5's trainings, read from its sweep file."""
    from econlm.sweep import expand, load_sweep

    specs = expand(load_sweep(ROOT / "bench" / "sweeps" / "decoder_wikitext2_ablation.yaml"))
    return [label(s) for s in specs if s["kind"] == "train" and _is_ablation(s["settings"])]


def _ablation(rows: list[dict]) -> list[str]:
    """Stage 5: gates on one component against gates on both at the same budget, and the paper's FFN tax."""
    ablation = [r for r in rows if r["kind"] == "ablation"]
    if not ablation:
        return []
    budgets = {r["budget"] for r in ablation if r["budget"] is not None}
    compared = [r for r in rows if r["kind"] == "train" and r["budget"] in budgets] + ablation
    table = markdown_table(
        [
            "model",
            "WT-103 test ppl",
            "vs lambda=0",
            "FLOPs share",
            "heads / K-V groups / FFN",
            "prefill x",
            "decode b1 x",
            "ppl increase per 10% of FLOPs cut",
        ],
        [
            [
                r["method"],
                round(r["ppl"], 3),
                f"{r['ppl_increase']:+.1%}",
                round(r["flops_share"], 3),
                f"{r['heads']} / {r['kv_groups']} / {r['ffn']}",
                round(r["prefill_speedup"], 2) if "prefill_speedup" in r else "-",
                round(r["decode_b1_speedup"], 2) if "decode_b1_speedup" in r else "-",
                f"{_increase_per_tenth_cut(r):+.1%}" if r["flops_share"] < 0.999 else "-",
            ]
            for r in compared
        ],
    )
    lines = [
        "## Which component to cut: the attention / FFN / both ablation",
        "",
        "The same recipe and tokens as the frontier's budget runs, with the gates on one component only; a "
        "budget is a share of the gated part's dense FLOPs, so the models end at different shares of the whole. "
        "The last column divides the perplexity increase by the FLOPs cut, to compare them at unequal cuts. The "
        "FFN tax is the paper's: lambda times the L1 sum of the SwiGLU activations, with no gates; it removes "
        "only the units (neurons, heads) compaction finds dead: |a| <= 1e-3 on every calibration token.",
        "",
        table,
        "",
    ]
    cutting = [r for r in compared if r["flops_share"] < 0.999]
    if len(cutting) > 1:
        best = min(cutting, key=_increase_per_tenth_cut)
        lines.append(
            f"- Least perplexity lost per FLOP removed: {best['method']} ({best['ppl_increase']:+.1%} for "
            f"{1 - best['flops_share']:.0%} fewer FLOPs)."
        )
    for r in ablation:
        if r["flops_share"] >= 0.999:
            lines.append(_untouched_compute(r))
    return lines + [""]


def _increase_per_tenth_cut(row: dict) -> float:
    """Perplexity increase per 10% of the reference's FLOPs removed, to compare models cut by unequal amounts."""
    return row["ppl_increase"] / (10 * (1 - row["flops_share"]))


def _untouched_compute(row: dict) -> str:
    """Why a tax with no gates saved no compute, from its own run: how small it made the activations, and how
    heavily it weighed against the task at its last step."""
    line = (
        f"- {row['method']}: compaction found no dead unit, so it computes every FLOP of the reference "
        f"(perplexity {row['ppl_increase']:+.1%}). A tax alone makes activations small, not zero"
    )
    sparsity = row.get("sparsity") or {}
    if "1e-02" in sparsity and "1e-03" in sparsity:
        line += (
            f": {sparsity['1e-02']:.0%} of its FFN activations are below 1e-2 in magnitude and "
            f"{sparsity['1e-03']:.0%} below 1e-3 on the test tokens its run scored at the end, but a neuron goes only when it is dead on "
            "every calibration token"
        )
    terms = row.get("cost_terms_last_step") or {}
    tax = (terms.get("loss/total") or 0) - (terms.get("loss/task") or 0)
    if terms.get("loss/task") and tax > terms["loss/task"]:
        line += (
            f". At the paper's scale the tax outweighs the task: at the last step lambda x C was {tax:.1f} against "
            f"a language-model loss of {terms['loss/task']:.2f}, so the model traded its language modelling for "
            "smaller activations that save nothing"
        )
    return line + "."


def _hour_settings(state: dict, batch: int, window: int) -> list[str]:
    """A gated SmolLM2 run that fits an hour on 2 cores, from the gated runs' measured step time."""
    gated = [m for m in state["models"].values() if m["kind"] == "train" and m.get("train_seconds_own")]
    if not gated:
        return []
    rates = sorted(m["train_seconds_own"] / m["training_steps"] for m in gated)
    recipe = gated[0]["settings"]
    flags = " ".join(
        f"--{key.replace('_', '-')} {recipe[key]:g}"
        for key in ("budget", "price_lr", "gate_lr", "budget_warmup", "gate_freeze")
        if recipe.get(key) is not None
    )
    per_step = rates[0]  # the others shared the cores with other work (the test suite) part of the time
    # 45 minutes of steps leave a quarter of the hour for loading, the final scoring and the save.
    steps = int(45 * 60 / per_step)
    step_time = json.loads((ROOT / "bench" / "results" / "decoder_step_time.json").read_text())["results"]
    with_ckpt = step_time["gradient checkpointing"]["seconds_per_step_median"]
    without = step_time["no checkpointing"]["seconds_per_step_median"]
    return [
        "## Settings that fit a CPU run of under an hour",
        "",
        f"Measured in this benchmark: a gated SmolLM2 step of {batch} x {window} tokens took {per_step:.1f} s on 2 "
        "quiet cores"
        + (f" ({', '.join(f'{r:.1f}' for r in rates[1:])} s in a run that shared the cores)" if len(rates) > 1 else "")
        + ". 45 minutes of steps "
        f"are about {steps} steps, {steps * batch * window:,} tokens; the rest of the hour loads the model, scores "
        "the test tokens and saves:",
        "",
        "```bash",
        f"econlm train --model smollm2 --task wikitext2 --max-length {window} --batch-size {batch} --epochs 1 "
        f"--cost flops {flags} --limit {steps * batch * window} --eval-limit 16384 "
        "--out runs/smollm2-cpu",
        "```",
        "",
        "Leave `--gradient-checkpointing` off on a CPU: it saves memory, not time. In "
        "`bench/results/decoder_step_time.json` (batch 2 x 256, measured on a busy machine, load average about 6) "
        f"the median step took {with_ckpt:.1f} s with it and {without:.1f} s without; its quieter second step was "
        "1.4 to 1.7 times the step without it. SmolLM2-135M at batch 8 x 256 needs about 8 GB without it.",
    ]


def render(state: dict, rows: list[dict], wall_seconds: float) -> str:
    reference = state["models"]["lambda0"]
    timing = state["timing"]
    steps, settings = reference["training_steps"], reference["settings"]
    batch, window = settings["batch_size"], settings["max_length"]
    table = markdown_table(
        [
            "model",
            "recovery",
            "steps",
            "WT-103 test ppl",
            "vs lambda=0",
            "FLOPs share",
            "params share",
            "heads / K-V groups / FFN",
            "prefill x",
            "decode b1 x",
            "decode b8 x",
            "train s",
        ],
        [
            [
                r["method"],
                "-" if r["kind"] != "posthoc" else ("yes" if r["recovery"] else "no"),
                r["training_steps"] if r["training_steps"] is not None else "-",
                round(r["ppl"], 3),
                f"{r['ppl_increase']:+.1%}",
                round(r["flops_share"], 3),
                round(r["params_share"], 3),
                f"{r['heads']} / {r['kv_groups']} / {r['ffn']}",
                round(r["prefill_speedup"], 2) if "prefill_speedup" in r else "-",
                round(r["decode_b1_speedup"], 2) if "decode_b1_speedup" in r else "-",
                round(r["decode_b8_speedup"], 2) if "decode_b8_speedup" in r else "-",
                round(r["training_seconds"]) if r.get("training_seconds") else "-",
            ]
            for r in rows
        ],
    )
    ref_timed = timing["by_model"][timing["structure_of"][json.dumps(reference["structure"])]]
    lines = [
        "# The decoder economy: SmolLM2-135M on WikiText (issue #12)",
        "",
        "## The frontier: incentive training against post-hoc rivals at the same structure",
        "",
        f"Every model starts from the pretrained SmolLM2-135M-Instruct and trains on the same "
        f"{steps * batch * window:,} WikiText-2 training tokens ({steps} steps of {batch} blocks of "
        f"{window}; `bench/sweeps/decoder_wikitext2.yaml`, seed {settings['seed']}). The reference is the lambda = 0 fine-tune on "
        "those tokens. Incentive models train hard-concrete gates on K/V groups (a group's key and value heads "
        "with every query head that reads them) and SwiGLU neurons under a FLOPs budget cleared by the price "
        "controller, and are then compacted (a closed group's query, key, value and output weights go together; "
        "a closed neuron's gate, up and down weights go together). Rivals prune the lambda = 0 "
        "model to the same number of heads and neurons per layer (Wanda-style: weight magnitude times input "
        "activation norm; activation; magnitude) and get either no recovery training or the same tokens and "
        "steps as the incentive run. Steps and seconds count everything behind a model (a rival's includes the "
        "lambda = 0 fine-tune it was pruned from).",
        "",
        f"- **Perplexity:** WikiText-103 test, the first {reference['test_tokens']:,} tokens, windows of {WINDOW} "
        f"with stride {WINDOW // 2}, of exactly the saved model (reloaded from its folder), every model scored "
        "by this one script.",
        "- **FLOPs:** MACs of the blocks' matrix products and the LM head per token of a 256-token sequence "
        "(FLOPs = 2 x MACs), as a share of the reference's.",
        f"- **Speed:** ratios to the reference, all distinct structures timed interleaved round by round in one "
        f"run ({timing['repeats']} rounds after one warm-up), {THREADS} threads, CPU, fp32, eager attention. Prefill: "
        f"one forward pass over {PREFILL} tokens at batch 1 (the reference's median "
        f"{ref_timed['prefill']['median'] * 1000:.0f} ms). Decode: greedy `generate` of {NEW_TOKENS} new tokens "
        "with the KV cache from a 16-token prompt, new tokens per second (the reference: "
        + ", ".join(f"{ref_timed[f'decode_batch{b}']['tokens_per_second']:.0f} at batch {b}" for b in DECODE_BATCHES)
        + "). A rival with the same per-layer heads, K/V groups and FFN widths runs the same shapes and shares "
        f"its structure's timing. Load average (1 minute) before and after the timing: "
        f"{timing['load_average'][0]:.1f} -> {timing['load_average'][1]:.1f} on 2 cores.",
        "",
        table,
        "",
    ]
    picture = figure(rows)
    if picture:
        lines += [f"![perplexity against FLOPs, prefill and decode speed]({picture})", ""]
    lines.append(
        f"Cost of this benchmark: {len(rows) - 1} trained or pruned models, at least {wall_seconds / 3600:.2f} hours "
        "of wall time on 2 CPU cores by the trials' own clocks (training, compaction, scoring; a trial stopped and "
        "resumed counts its last part only), plus this script's scoring and timing."
    )
    lines += ["", *_run_to_run(state, rows), "## Issue #12's targets", ""]
    lines += _incentive_verdicts(rows)
    lines += ["", _flap_line(rows, steps), ""] + _why(state, rows) + _ablation(rows)
    lines += ["## The price, and what compaction could realise", ""]
    per_head_gates = False
    for r in rows:
        info = state["models"][r["name"]]
        if r["kind"] not in ("train", "ablation") or not info.get("gates"):
            continue
        gates, removed = info.get("gates") or {}, info.get("removed") or {}
        heads = gates.get("heads") or {}
        per_head_gates |= bool(heads.get("total")) and "gate_covers" not in heads
        lines.append(
            f"- {info['method']}: the gates' expected compute share when training ended "
            f"{gates.get('expected_compute_share', float('nan')):.3f} of the gated units' FLOPs against a budget of "
            f"{info['budget']} (where the price left it when the gates froze), final price "
            f"lambda {info['lambda_final']:.3g}. Gates closed "
            + " and ".join(
                f"{part['closed']} of {part['total']} {what}"
                for part, what in ((heads, "query heads"), (gates.get("neurons") or {}, "neurons"))
                if part.get("total")
            )
            + f"; compaction removed {removed.get('heads', 0)} query heads and {removed.get('neurons', 0)} neurons, "
            f"so the compacted model computes {r['flops_share']:.3f} of the reference's FLOPs."
        )
    if per_head_gates:
        lines += [
            "",
            "These runs gated each query head on its own, and priced a closed query head's MACs as saved. But with "
            "grouped-query attention only whole K/V groups can be removed (transformers' Llama attention needs "
            "equal groups), so a closed head whose group partners stayed open saved nothing once compacted: the "
            "gap between the two shares above. The benchmark found it; the gates now cover whole K/V groups, so "
            "the share charged is the share the compacted model computes (tested in "
            "`tests/unit/test_compact.py::test_the_flops_price_charges_only_compute_that_compaction_removes`). "
            "These runs predate that change and are to be run again with it.",
        ]
    else:
        lines += _earlier_per_head_run(next(m for m in state["models"].values() if m["kind"] == "train")["settings"])
    lines += ["", "## Generation after compaction", ""]
    prompt = PROMPT.strip().replace("\n", "\\n")
    lines.append(f"Greedy continuations (at most 24 new tokens) of the prompt `{prompt}`:")
    lines.append("")
    for r in rows:
        text = r["continuation"].replace("\n", " ").replace("|", "/")
        shown = f'"{text.strip()}"' if text.strip() else "nothing but whitespace or the end-of-text token"
        lines.append(f"- {r['method']}: {shown}")
    lines += [""] + _not_run(rows, wall_seconds)
    lines += _hour_settings(state, batch, window)
    return "\n".join(lines)


def docs() -> None:
    state = load_state()
    if not state.get("timing"):
        raise SystemExit("nothing timed yet: run `python bench/decoder.py time` first")
    rows = rows_of(state)
    results = load_results()
    wall = sum(r.get("seconds", 0) for r in results)
    payload = {"rows": rows, "timing": state["timing"], "trial_wall_seconds": wall}
    save("decoder", payload, render(state, rows, wall))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("score", "time", "docs"))
    parser.add_argument("--test-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.step == "score":
        score(args.test_tokens)
    elif args.step == "time":
        time_structures(args.repeats)
    else:
        docs()


if __name__ == "__main__":
    main()
