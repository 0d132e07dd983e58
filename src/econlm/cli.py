"""The ``econlm`` command: a thin layer that parses flags, builds a config and calls one library function.

Heavy libraries (torch, transformers) are imported inside the commands, so ``econlm --help`` is instant.
User mistakes print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from econlm.errors import UserError

EXIT_USER_ERROR = 2


# Help texts name what is registered: "{tasks}", "{costs}" and "{aliases}" are filled in from the registries
# only when help is shown (the cost terms live next to torch code, which parsing a command must not import).
_REGISTRIES = {
    "{tasks}": ("econlm.data", "TASKS"),
    "{costs}": ("econlm.cost", "COSTS"),
    "{aliases}": ("econlm.models", "ALIASES"),
}


class _HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action) -> str:  # the hook argparse's own formatters override
        import importlib

        text = super()._get_help_string(action)
        for placeholder, (module, name) in _REGISTRIES.items():
            if placeholder in text:
                text = text.replace(placeholder, ", ".join(getattr(importlib.import_module(module), name)))
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit code 2, and help texts listing registered names."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse's API
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _add_data_flags(p, splits: tuple[str, ...]) -> None:
    """Flags that describe a user's own data file (--task FILE): columns, type, metric, split files."""
    from econlm.userdata import TASK_TYPES

    g = p.add_argument_group("your own data (--task FILE: .csv, .tsv, .jsonl, a save_to_disk folder or a .txt corpus)")
    g.add_argument(
        "--text-columns",
        default=None,
        help="the text column, or two for pairs: A[,B] (default: a GLUE pair such as sentence1,sentence2 if the "
        "header has one, else text or sentence)",
    )
    g.add_argument("--label-column", default=None, help="the label column (default: label)")
    g.add_argument(
        "--task-type",
        default=None,
        choices=TASK_TYPES,
        help="default: from the labels (class names or ids: classification; scores: regression)",
    )
    g.add_argument("--metric", default=None, help="the headline metric (default by task type)")
    if "train" in splits:
        g.add_argument("--train", dest="train_file", default=None, help="a separate training file")
    g.add_argument("--dev", dest="dev_file", default=None, help="a separate dev file (default: 10%% held out)")


def _data_fields(args) -> dict:
    from econlm.userdata import DATA_FIELDS

    return {k: getattr(args, k) for k in DATA_FIELDS if getattr(args, k, None) is not None}


def _add_probe(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="score a model under shrinking attention budgets (the scarcity probe)",
        description="Score a model under top-k attention budgets and record the Gini coefficient and entropy "
        "of its attention rows per layer and head. Writes probe.json, probe.csv and probe.png to --out.",
    )
    p.add_argument("--model", default="minilm", help="{aliases}, a local checkpoint directory or a hub id")
    p.add_argument("--task", default="stsb", help="one of {tasks}")
    p.add_argument(
        "--budgets",
        default="full,32,16,8,4,2,1",
        help="comma-separated: 'full', keys per query (8) or a fraction of the allowed keys (0.25)",
    )
    p.add_argument("--split", default="dev", help="train, dev or test (default dev)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples (tokens for LM tasks)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (the window for LM tasks)")
    p.add_argument(
        "--stride", type=int, default=None, help="LM tasks: new tokens scored per window (default max-length/2)"
    )
    p.add_argument("--data-dir", default=None, help="local data folder (default $ECONLM_DATA, else the HF hub)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ffn-eps",
        type=float,
        default=None,
        help="set FFN activations with |a| < EPS to zero while scoring (effective compute counts the rest)",
    )
    p.add_argument(
        "--token-budget",
        default=None,
        metavar="F[,F...]",
        help="encoders: after each layer keep this share of each example's tokens, the most attended-to ones "
        "([CLS]/[SEP] always kept): one fraction in (0, 1] for every layer, or one per layer (1,0.8,0.6,...); "
        "reports the exact MACs of the shortened sequences",
    )
    p.add_argument(
        "--latency-repeats",
        type=int,
        default=0,
        help="time the token budget (or a checkpoint's learned thresholds) against every token, round by round, "
        "on real dev batches with dynamic padding: this many rounds (default 0: no timing)",
    )
    p.add_argument("--latency-examples", type=int, default=128, help="dev examples the timing runs on")
    p.add_argument("--out", required=True, help="output folder")
    _add_data_flags(p, ("dev",))
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    from econlm.probing import ProbeConfig, format_table, run_probe, save_probe

    config = ProbeConfig(
        model=args.model,
        task=args.task,
        budgets=tuple(args.budgets.split(",")),
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        max_length=args.max_length,
        stride=args.stride,
        data_dir=args.data_dir,
        seed=args.seed,
        ffn_eps=args.ffn_eps,
        token_budget=args.token_budget,
        latency_repeats=args.latency_repeats,
        latency_examples=args.latency_examples,
        **_data_fields(args),
    )
    result = run_probe(config)
    paths = save_probe(result, args.out)
    meta = result.meta
    if meta["truncated_examples"]:
        print(
            f"econlm: note: {meta['truncated_examples']} of {meta['examples_scored']} examples were longer than "
            f"--max-length {args.max_length} and were truncated",
            file=sys.stderr,
        )
    print(f"\n{meta['model']} on {meta['task']} {meta['split']}: {meta['examples_scored']} {meta['unit_of_examples']}")
    print(format_table(result.rows))
    timed = meta.get("token_budget_latency")
    if timed:
        print(
            f"token budget {timed['schedule']}: x{timed['speedup']:.2f} faster than every token (median of "
            f"{timed['repeats']} interleaved rounds, {timed['examples']} dev examples in batches of "
            f"{timed['batch_size']}, dynamic padding, {timed['threads']} threads, CPU)"
        )
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return 0


TRAIN_HELP = {
    "model": "{aliases}, a local checkpoint directory or a hub id",
    "task": "one of {tasks}",
    "lam": "lambda, the price of compute (>= 0); the controller's starting price with --budget",
    "cost": "comma-separated cost terms: {costs} (tokens: learned token budgets for encoders, one threshold per "
    "layer on the attention a token receives; flops,tokens prices units and tokens in one market)",
    "target": "components taxed: attention, ffn or both (the paper's ablation)",
    "attention_weight": "weight of the attention component",
    "ffn_weight": "weight of the FFN component",
    "schedule": "lambda schedule: constant, warmup (linear over --warmup-steps) or controller",
    "warmup_steps": "steps of the linear lambda warm-up",
    "budget": "target share of dense compute in (0, 1] (flops, latency or tokens): lambda becomes a price set by "
    "dual ascent",
    "price_lr": "eta of the price controller: lambda += eta * (share - budget) each step",
    "gate_freeze": "gates (flops, latency) and token thresholds: share of training after which they are fixed "
    "(token masks turn hard) and the weights recover",
    "gate_init": "gates (flops, latency): open (every gate starts open) or fisher (starts ordered by each unit's "
    "Fisher importance per MAC on 256 training examples, least valuable lowest)",
    "token_temperature": "--cost tokens: temperature T of the soft token mask sigmoid((value - threshold) / T); "
    "values average 1 over an example's tokens",
    "token_lr": "--cost tokens: learning rate of the token thresholds",
    "token_budget": "encoders: fine-tune with a fixed token budget in force (PoWER-BERT's retraining): after each "
    "layer keep this share of each example's most attended-to tokens, one fraction for every layer or one per "
    "layer (1,0.8,0.6,...); the checkpoint keeps it (token_schedule.json) and runs with it",
    "budget_warmup": "controller only: share of training over which the budget falls from 1 to --budget",
    "budget_rho": (
        "controller only: weight rho of the anchor 0.5 * rho * (share - budget)^2, the price's proportional term; "
        "raise it (1000, say) when the share ends far below --budget"
    ),
    "epochs": "training epochs (fractions allowed)",
    "lr": "learning rate of the model weights",
    "gate_lr": "learning rate of the gates (flops, latency)",
    "weight_decay": "AdamW weight decay",
    "batch_size": "examples per step (per process)",
    "max_length": "tokens per sequence (LM tasks: at most the model's context)",
    "gradient_checkpointing": "recompute each layer's activations in the backward pass: less memory, slower steps",
    "seed": "random seed (data order, initialisation, dropout, gates)",
    "limit": "use only the first N training examples (LM tasks: the first N training tokens, in whole blocks)",
    "eval_limit": "evaluate on the first N dev examples (test tokens for LM tasks; also the validation tokens "
    "--eval-every scores)",
    "data_dir": "local data folder (default $ECONLM_DATA, else the HF hub)",
    "save_every": "steps between checkpoints",
    "eval_every": "steps between validation scores, logged to TensorBoard (eval/<metric>) and metrics.json "
    "(LM tasks: perplexity on the validation split's first --eval-limit tokens; others: the dev split); "
    "0 (default): only the final score",
    "device": "cpu (default) or auto (a GPU when there is one; accelerate launch sets devices)",
    "latency_table": "--cost latency: the table of this machine's latency per kept unit (econlm latency-table)",
    "teacher": "distil from this fine-tuned checkpoint of the same task (the lambda = 0 fine-tune, say)",
    "distill_weight": "weight of the prediction-layer distillation term (KL at a temperature; MSE for regression)",
    "distill_hidden_weight": "weight of the per-layer hidden-state MSE to the teacher (default 0: off)",
    "distill_temperature": "temperature of the distillation KL",
    "lr_warmup_ratio": "share of the steps over which the learning rate warms up",
    "log_every": "steps between TensorBoard and lambda-history records",
    "cost_reduction": "mean (per token and unit, the default) or sum (the paper's L1 sums, for its lambda grid)",
    "train_file": "your own data: a separate training file (default: --task FILE less its dev share)",
    "dev_file": "your own data: a separate dev file (default: 10%% of --task FILE, the same for every run)",
    "text_columns": "your own data: the text column, or two for pairs: A[,B] (default: a GLUE pair such as "
    "sentence1,sentence2 if the header has one, else text or sentence)",
    "label_column": "your own data: the label column (default: label)",
    "task_type": "your own data: classification, regression or lm (default: from the labels)",
    "metric": "your own data: the headline metric (default by task type)",
}


def train_flags() -> dict[str, tuple[type, str]]:
    """Every TrainConfig field but --out, with its type read from the dataclass: flags cannot drift from it."""
    from dataclasses import fields

    from econlm.training import TrainConfig

    def kind(annotation: str) -> type:
        if annotation.startswith("tuple"):
            return str  # comma-separated, split below
        if annotation == "bool":
            return bool  # --name / --no-name
        return float if "float" in annotation else int if "int" in annotation else str

    return {f.name: (kind(str(f.type)), TRAIN_HELP.get(f.name, "")) for f in fields(TrainConfig) if f.name != "out"}


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune with a compute tax: L = L_task + lambda * C_comp",
        description="Incentive training. Flags override --config FILE.yaml, which overrides the defaults. "
        "Writes a save_pretrained checkpoint, metrics.json and train_config.json to --out.",
    )
    p.add_argument("--config", default=None, help="YAML file with any of the settings below")
    aliases = {"train_file": ["--train"], "dev_file": ["--dev"]}  # the short names users type
    for name, (kind, text) in train_flags().items():
        flags = ["--" + name.replace("_", "-"), *aliases.get(name, [])]
        if kind is bool:
            p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(*flags, dest=name, type=kind, default=None, help=text)
    p.add_argument("--out", default=None, help="output folder (required, here or in the YAML file)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from econlm import config as config_module
    from econlm.training import Interrupted, TrainConfig, TrainingFault, resolve_resume_config, train

    overrides = {name: getattr(args, name) for name in train_flags()}
    overrides["out"] = args.out
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out: the folder of the run to continue")
        config = resolve_resume_config(args.out, overrides)
    else:
        if overrides["cost"] is not None:
            overrides["cost"] = tuple(overrides["cost"].split(","))
        config = config_module.build(TrainConfig, args.config, overrides)
    try:
        metrics = train(config, resume=args.resume)
    except TrainingFault as fault:
        print(
            f"econlm: training stopped: {fault}; the last good checkpoint (if any) is in {config.out}/checkpoint",
            file=sys.stderr,
        )
        return 1
    except Interrupted as stop:
        print(f"econlm: {stop}", file=sys.stderr)
        return 128 + stop.signum  # 130 for Ctrl-C, 143 for SIGTERM: what schedulers expect
    if metrics:
        print(
            f"\n{config.model} on {metrics['task']}: {metrics['metric']} {metrics['score']:.4f} "
            f"({metrics['evaluated_on']}, {metrics['eval_examples']} "
            + ("tokens scored)" if metrics["metric"] == "perplexity" else "examples)")
        )
        sparsity = metrics["ffn_sparsity"]["overall"]
        print(
            f"lambda {metrics['lambda_final']:.4g}; attention Gini {metrics['attention']['gini']:.3f}, "
            f"entropy {metrics['attention']['entropy']:.3f}; FFN sparsity "
            + ", ".join(f"|a|<={k}: {v:.3f}" for k, v in sparsity.items())
        )
        tokens = metrics.get("token_budget")
        if tokens:
            print(
                ("token budget " + ",".join(f"{f:g}" for f in tokens["schedule"]) if "schedule" in tokens else "learned token budget")
                + ": tokens per layer "
                + ", ".join(f"{n:.1f}" for n in tokens["tokens_per_layer"])
                + f"; block MACs x{tokens['macs_ratio']:.3f} of the full sequences (dev data)"
            )
        print(f"wrote {config.out}")
    return 0


def _add_compact(sub) -> None:
    p = sub.add_parser(
        "compact",
        help="remove dead heads and FFN neurons: a smaller dense model that is actually faster",
        description="Remove FFN neurons and attention heads that are gated off or never exceed --eps on a "
        "calibration set; verify, measure and save the smaller model (load it with econlm.load or any econlm "
        "command). Writes the model and compact.json to --out.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory (for example one econlm train wrote)")
    p.add_argument("--out", required=True)
    p.add_argument("--calib-examples", type=int, default=512, help="training examples used for calibration")
    p.add_argument(
        "--calib-seed", type=int, default=0, help="seed of the random draw of those examples (default 0)"
    )
    p.add_argument("--eps", type=float, default=1e-3, help="a unit whose |activation| never exceeds this is removed")
    p.add_argument("--task", default=None, help="calibration/evaluation task (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens per sequence (default: as the checkpoint trained, else 128)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-limit", type=int, default=None, help="score on the first N dev examples only")
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the latency measurement")
    p.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time both models in ONNX Runtime (default: when onnxruntime is installed)",
    )
    p.add_argument(
        "--latency-table", default=None, help="report the speedup this table (econlm latency-table) predicts"
    )
    p.add_argument("--prefill-length", type=int, default=512, help="decoders: prompt tokens of the prefill timing")
    p.add_argument("--decode-tokens", type=int, default=128, help="decoders: new tokens per timed generate call")
    p.add_argument(
        "--token-budget",
        default=None,
        help="encoders: also measure this token budget (0.5, or one fraction per layer: 1,0.8,0.6,...) on both "
        "models, reporting score, MACs and speedup for units, tokens, and units + tokens",
    )
    _add_data_flags(p, ("train", "dev"))
    p.set_defaults(func=_cmd_compact)


def _cmd_compact(args) -> int:
    from econlm.compact import CompactConfig, run_compact
    from econlm.export import onnx_available

    config = CompactConfig(
        checkpoint=args.checkpoint,
        out=args.out,
        calib_examples=args.calib_examples,
        calib_seed=args.calib_seed,
        eps=args.eps,
        task=args.task,
        data_dir=args.data_dir,
        max_length=args.max_length,
        batch_size=args.batch_size,
        eval_limit=args.eval_limit,
        latency_repeats=args.latency_repeats,
        threads=args.threads,
        onnx=onnx_available() if args.onnx is None else args.onnx,
        latency_table=args.latency_table,
        prefill_length=args.prefill_length,
        decode_tokens=args.decode_tokens,
        token_budget=args.token_budget,
        **_data_fields(args),
    )
    report = run_compact(config)
    before, after, ratios = report["before"], report["after"], report["ratios"]
    print(f"removed {report['removed']['heads']} heads and {report['removed']['neurons']} FFN neurons")
    print(
        f"parameters {before['parameters']:,} -> {after['parameters']:,}; dense FLOPs x{ratios['flops']:.3f}; "
        f"CPU speedup batch 1: {ratios['speedup_batch1']:.2f}x, batch 32: {ratios['speedup_batch32']:.2f}x"
    )
    if "onnxruntime_speedup_batch1" in ratios:
        print(
            f"ONNX Runtime CPU speedup batch 1: {ratios['onnxruntime_speedup_batch1']:.2f}x, "
            f"batch 32: {ratios['onnxruntime_speedup_batch32']:.2f}x"
        )
    if "prefill_speedup" in ratios:
        decode = ", ".join(
            f"batch {after['decoding'][k]['batch']}: {after['decoding'][k]['tokens_per_second']:.1f} tokens/s "
            f"({ratios[k + '_speedup']:.2f}x)"
            for k in after["decoding"]
            if k.startswith("decode_")
        )
        print(f"decoder: prefill {ratios['prefill_speedup']:.2f}x faster; generation {decode}")
    for key, rule in (("token_thresholds", "learned token thresholds"), ("token_schedule", "token schedule")):
        checked = report["verification"].get(key)
        if checked:  # a checkpoint that drops tokens: both models dropped them by its rule
            tokens = ", ".join(f"{n:.1f}" for n in after["token_budget"]["tokens_per_layer"])
            print(
                f"{rule} kept: tokens per layer {tokens} (dev data); the same tokens dropped as "
                f"before on the calibration batches: {'yes' if checked['same_tokens_dropped'] else 'NO'}"
            )
    levers = report.get("levers")
    if levers:
        print(f"levers (tokens: {levers['tokens']}; MACs of the blocks on the real dev tokens):")
        for name, v in levers["variants"].items():
            score = "-" if v["score"] is None else f"{v['score']:.4f}"
            print(
                f"  {name:<13} score {score}  MACs x{v['macs_share']:.3f}  speedup on dev batches of 1: "
                f"{v['speedup_dev_b1']:.2f}x, of 32: {v['speedup_dev_b32']:.2f}x (random full-length rows: "
                f"{v['speedup_batch1']:.2f}x, {v['speedup_batch32']:.2f}x)"
            )
    predicted = report.get("latency_table")
    if predicted:
        measured = predicted["measured_speedup"]
        print(
            f"latency table predicts {predicted['predicted_speedup']:.2f}x at batch {predicted['batch']}"
            + (f" (measured {measured:.2f}x)" if measured else " (not measured at that batch and length)")
        )
    if before["score"]:
        print(f"{before['score']['metric']}: {before['score']['value']:.4f} -> {after['score']['value']:.4f}")
    print(f"largest output difference {report['verification']['max_abs_output_difference']:.3g}; wrote {args.out}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of incentive-training trials and baselines (in-process or on Ray), resumably",
        description="Run the trials of a sweep YAML file. Rerunning the same command skips finished trials. "
        "Writes trials/<id>/result.json, results.jsonl and pareto.json to --out.",
    )
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("--out", required=True)
    p.add_argument("--ray", default=None, help="auto (an existing cluster), local (start one here) or an ADDRESS")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    import shlex

    from econlm.sweep import SweepStopped, load_sweep, run_sweep

    config = load_sweep(args.config)
    try:
        results = run_sweep(config, args.out, ray=args.ray)
    except SweepStopped as stop:
        again = shlex.join(
            ["econlm", "sweep", args.config, "--out", args.out] + (["--ray", args.ray] if args.ray else [])
        )
        print(
            f"econlm: {stop}; finished trials are saved and a stopped training keeps its checkpoint. "
            f"Continue with: {again}",
            file=sys.stderr,
        )
        return 128 + stop.signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    ok = sum(r["status"] == "ok" for r in results)
    print(f"{ok} trials finished, {len(results) - ok} failed; results in {args.out}/results.jsonl and pareto.json")
    print(_trial_table(results))
    for r in results:
        if r["status"] == "failed":
            print(f"  failed: {r['id']}: {r['error']}")
    print(f"make the report with: econlm report {args.out}")
    return 0


def _trial_table(results: list[dict]) -> str:
    """One line per finished trial: its score, and for compacted models the FLOPs cut and measured speedup."""
    lines = [f"  {'trial':<44} {'score':>8} {'FLOPs cut':>9} {'speedup b1':>10} {'b32':>6}"]
    for r in results:
        if r["status"] != "ok" or r.get("score") is None:
            continue
        ratios = (r.get("compact") or {}).get("ratios") or {}
        cut = f"{1 - ratios['flops']:.1%}" if ratios.get("flops") else "-"
        b1 = f"{ratios['speedup_batch1']:.2f}x" if ratios.get("speedup_batch1") else "-"
        b32 = f"{ratios['speedup_batch32']:.2f}x" if ratios.get("speedup_batch32") else "-"
        lines.append(f"  {r['id'][:44]:<44} {r['score']:>8.4f} {cut:>9} {b1:>10} {b32:>6}")
    return "\n".join(lines)


def _add_market(sub) -> None:
    p = sub.add_parser(
        "market",
        help="what each head and FFN block is worth (Shapley values), what it costs, and a market-clearing pruning",
        description="Estimate Shapley values of attention heads and FFN neuron blocks for the task metric on a dev "
        "subset (antithetic permutation sampling, truncated at half the units, per-unit early stopping, 95% "
        "intervals); price each unit by its MACs; estimate interactions among the top heads; keep units by value "
        "per MAC at each --budgets share of compute and compare with activation and Fisher pruning at the same "
        "structure on held-out dev examples. With --sweep DIR, also check whether each controller run's price "
        "is the shadow price of compute. Writes market.json and PNG figures to --out.",
    )
    p.add_argument("model", nargs="?", default=None, help="a checkpoint fine-tuned on --task (econlm train writes one)")
    p.add_argument("--task", default=None, help="the task the model was fine-tuned on")
    p.add_argument("--out", required=True)
    p.add_argument("--units", default="head,ffn", help="head, ffn or head,ffn (one game with both)")
    p.add_argument("--block", type=int, default=128, help="FFN neurons per block (must divide the FFN width)")
    p.add_argument("--examples", type=int, default=512, help="dev examples the values are measured on")
    p.add_argument("--value", default="metric", choices=("metric", "loss"), help="the task metric or minus the loss")
    p.add_argument("--pairs", type=int, default=200, help="antithetic permutation pairs at most")
    p.add_argument("--tol", type=float, default=0.01, help="stop sampling a unit at this 95%% half-width")
    p.add_argument("--truncate", default="half", choices=("half", "none"), help="stop each walk at half the units")
    p.add_argument(
        "--interval",
        default="normal",
        choices=("normal", "bernstein"),
        help="the 95%% half-width early stopping reads (empirical Bernstein is more conservative)",
    )
    p.add_argument("--max-minutes", type=float, default=60.0, help="stop sampling after this long")
    p.add_argument("--interaction-top", type=int, default=6, help="interactions among this many top heads (0: none)")
    p.add_argument("--interaction-samples", type=int, default=24)
    p.add_argument("--budgets", default="0.8,0.6,0.5", help="shares of the blocks' dense MACs the market may spend")
    p.add_argument(
        "--latency-table",
        default=None,
        help="price units by this table's marginal latency (econlm latency-table); --budgets are then shares of "
        "the dense model's predicted latency",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sweep", default=None, help="a sweep folder: check its controller runs' prices (shadow prices)")
    _add_data_flags(p, ("dev",))
    p.set_defaults(func=_cmd_market)


def _cmd_market(args) -> int:
    from pathlib import Path

    if args.model is None and args.sweep is None:
        raise UserError("econlm market needs a MODEL fine-tuned on --task, or --sweep DIR for the shadow-price check")
    if args.model is not None and args.task is None:
        raise UserError("--task is required with a MODEL: the task it was fine-tuned on")
    result = {}
    if args.model is not None:
        from econlm.market_run import MarketConfig, market_summary, run_market

        config = MarketConfig(
            model=args.model,
            task=args.task,
            out=args.out,
            units=args.units.replace("heads", "head"),
            block=args.block,
            examples=args.examples,
            value=args.value,
            pairs=args.pairs,
            tol=args.tol,
            truncate=args.truncate,
            interval=args.interval,
            max_minutes=args.max_minutes,
            interaction_top=args.interaction_top,
            interaction_samples=args.interaction_samples,
            budgets=args.budgets,
            latency_table=args.latency_table,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            data_dir=args.data_dir,
            **_data_fields(args),
        )
        result = run_market(config)
        print(market_summary(result))
    if args.sweep is not None:
        from econlm.shadow import format_shadow, shadow_prices

        result["shadow_prices"] = shadow_prices(args.sweep, data_dir=args.data_dir)
        print(format_shadow(result["shadow_prices"]))
    from econlm.market_run import save_market

    if args.model is None:
        existing = Path(args.out) / "market.json"
        if existing.exists():
            import json

            result = {**json.loads(existing.read_text()), "shadow_prices": result["shadow_prices"]}
    paths = save_market(result, args.out)
    print(f"wrote {paths['json']}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page with the plots of a sweep folder")
    p.add_argument("folder", help="the --out folder of econlm sweep")
    p.add_argument("--out", default=None, help="HTML file (default FOLDER/report.html)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from econlm.report import write_report

    print(f"wrote {write_report(args.folder, args.out)}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a dense or compacted model to ONNX and check it against PyTorch in ONNX Runtime",
        description="Export a checkpoint (for example one econlm compact wrote) as one ONNX graph with dynamic "
        "batch and sequence axes, run it in ONNX Runtime on batches of other shapes and report the largest "
        "difference from PyTorch. Writes OUT.onnx and OUT.json (the report). Needs the onnx extra.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory or an alias ({aliases})")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from econlm.export import check_onnx_path, export_onnx, require_onnx
    from econlm.models import check_spec, load_model
    from econlm.runinfo import run_metadata, write_json

    require_onnx()
    check_spec(args.checkpoint)
    target = check_onnx_path(args.onnx)
    if target.exists():
        raise UserError(f"{target} exists; choose another --onnx path (nothing is overwritten)")
    loaded = load_model(args.checkpoint)
    report = export_onnx(loaded.model, loaded.tokenizer, target, opset=args.opset)
    write_json(
        target.with_suffix(".json"), {**report.to_json(), "meta": run_metadata(config=vars(args) | {"func": None})}
    )
    verdict = "matches" if report.matches else f"DIFFERS (tolerance {report.tolerance:g})"
    print(
        f"wrote {target} ({report.size_bytes / 1e6:.1f} MB, inputs {', '.join(report.inputs)} -> {report.output}, "
        f"dynamic batch and sequence); ONNX Runtime {verdict}: largest difference {report.max_abs_difference:.3g} "
        f"on batches {', '.join('x'.join(map(str, s)) for s in report.checked_shapes)}"
    )
    return 0 if report.matches else 1


def _add_latency_table(sub) -> None:
    p = sub.add_parser(
        "latency-table",
        help="measure what removing heads and FFN neurons saves on this machine (the latency price)",
        description="Time the model pruned to k kept heads (K/V groups for grouped-query attention) and to k "
        "kept FFN neurons in every layer, and the dense model on fewer tokens, each round by round with the dense "
        "model, and fit each layer's saving as a monotone piecewise-linear curve. Writes a JSON table for econlm "
        "train --cost latency (and latency,tokens) and econlm compact --latency-table.",
    )
    p.add_argument("model", help="{aliases}, a checkpoint directory or a hub id")
    p.add_argument("--out", required=True, help="the JSON table to write")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per pruned shape")
    p.add_argument("--ffn-points", type=int, default=12, help="kept FFN widths measured")
    p.add_argument("--token-points", type=int, default=8, help="sequence lengths measured (for pricing tokens)")
    p.set_defaults(func=_cmd_latency_table)


def _cmd_latency_table(args) -> int:
    from pathlib import Path

    if min(args.batch, args.seq_len, args.repeats, args.ffn_points, args.token_points) < 1:
        raise UserError("--batch, --seq-len, --repeats, --ffn-points and --token-points must be at least 1")
    target = Path(args.out)
    if target.exists():
        raise UserError(f"{target} exists; choose another --out (nothing is overwritten)")
    import torch

    from econlm.latency_table import measure_table
    from econlm.models import check_spec, load_model
    from econlm.runinfo import run_metadata, write_json

    check_spec(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, "base")
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit and args.seq_len > limit:
        raise UserError(f"--seq-len {args.seq_len} is above the model's context of {limit} tokens")
    table = measure_table(
        loaded.model,
        name=args.model,
        batch=args.batch,
        seq_len=args.seq_len,
        repeats=args.repeats,
        ffn_points=args.ffn_points,
        token_points=args.token_points,
    )
    write_json(
        target, {**table.to_json(), "meta": run_metadata(config={k: v for k, v in vars(args).items() if k != "func"})}
    )
    half_heads = table.predicted_speedup(
        [table.model["heads"] // 2] * table.model["layers"], [table.model["intermediate"]] * table.model["layers"]
    )
    half_ffn = table.predicted_speedup(
        [table.model["heads"]] * table.model["layers"], [table.model["intermediate"] // 2] * table.model["layers"]
    )
    print(
        f"wrote {target}: dense {table.dense_seconds * 1000:.2f} ms at batch {args.batch} x {args.seq_len} tokens, "
        f"{table.setup['threads']} threads; predicted speedup with half the heads {half_heads:.2f}x, half the FFN "
        f"{half_ffn:.2f}x, half the tokens after the first layer "
        f"{1 / _half_tokens_share(table):.2f}x"
    )
    return 0


def _half_tokens_share(table) -> float:
    """The token curve's predicted share of dense latency when every layer after the first runs on half the
    sequence (units dense)."""
    import torch

    from econlm.latency_table import latency_token_share

    full, half = torch.tensor([float(table.setup["seq_len"])]), torch.tensor([table.setup["seq_len"] / 2])
    return float(latency_token_share(table, [full] + [half] * (table.model["layers"] - 1)))


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list model aliases and tasks")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args) -> int:
    from econlm.data import TASKS
    from econlm.models import ALIASES

    print("model aliases (also: any local checkpoint directory or Hugging Face hub id):")
    for name, alias in ALIASES.items():
        print(f"  {name:<10} {alias.description}")
    from econlm.cost import COSTS

    print("cost terms (econlm train --cost):", ", ".join(COSTS))
    print("tasks:")
    for task in TASKS.values():
        print(f"  {task.name:<12} {task.kind:<15} metrics: {', '.join(task.metrics)}")
    return 0


COMMANDS: list[Callable] = [
    _add_probe,
    _add_train,
    _add_compact,
    _add_export,
    _add_latency_table,
    _add_sweep,
    _add_market,
    _add_report,
    _add_list,
]


def build_parser() -> argparse.ArgumentParser:
    from econlm import __version__

    parser = _Parser(prog="econlm", description="Computational economics of transformer language models.")
    parser.add_argument("--version", action="version", version=f"econlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as error:
        print(f"econlm: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("econlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
