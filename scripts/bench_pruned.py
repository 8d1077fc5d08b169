"""Time log_prob and sampling of a dense toy CNF beside its structured-pruned and unstructured-pruned versions.

One process builds the 2-D CNF `build_cnf(2, "mlp", (64, 64, 64), "tanh")` (dopri5, rtol = atol =
1e-5), optionally trains it with Adam on a toy set, and derives from those same weights:

- "structured, exported": `prune_structured` to the prune ratio, then `export_structured`, so the
  hidden layers are narrower dense layers;
- "structured, masked": the same pruned model before export, full-size layers with masks;
- "unstructured, masked": `prune_unstructured` (global magnitude) to the prune ratio, full-size
  layers with masks.

The pruned models are not fine-tuned. Pruning changes the vector field, so the adaptive solver
may take a different number of steps, and the script reports the NFE and the seconds per NFE
next to the seconds per call. Timings interleave the models within every repeat, so load from
other processes hits all of them alike. Both log_prob (exact trace) and sample run under
torch.no_grad().

Run it from the repository root with the package importable (`pip install -e .`).

Example:
    python scripts/bench_pruned.py --train-steps 200 --prune-ratio 0.5 --out .bench/pruned.json
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from sparse_cnf.data import make_toy
from sparse_cnf.flows import CNF, build_cnf
from sparse_cnf.pruning import count_parameters, export_structured, prune_structured, prune_unstructured

from bench_machine import machine_info


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64, 64], help="hidden widths of the MLP field")
    parser.add_argument("--dataset", default="gaussians", help="toy set of sparse_cnf.data.make_toy")
    parser.add_argument("--train-steps", type=int, default=200,
                        help="Adam steps on the dense model before pruning; 0 keeps the random initial weights")
    parser.add_argument("--train-batch", type=int, default=1000, help="training points per Adam step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--prune-ratio", type=float, default=0.5,
                        help="share of all parameters removed, for both pruning methods")
    parser.add_argument("--eval-size", type=int, default=1000, help="test points per log_prob call")
    parser.add_argument("--samples", type=int, default=1000, help="samples per sample call")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per model and operation")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls per model and operation before the repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data and base samples")
    parser.add_argument("--out", type=Path, default=Path(".bench/pruned.json"), help="JSON file for the results")
    args = parser.parse_args()

    if not 0.0 < args.prune_ratio < 1.0:
        parser.error(f"--prune-ratio must lie in (0, 1); got {args.prune_ratio}.")
    if args.repeats < 1 or args.warmup < 0 or args.train_steps < 0:
        parser.error("--repeats must be >= 1, and --warmup and --train-steps >= 0.")

    return args


def _normalized_toy(name: str, n: int, seed: int, mean: float | None = None, std: float | None = None):
    """Draw n points of a toy set and scale them by one scalar mean and std, as the datamodule does."""
    x = make_toy(name, n, seed=seed, with_mode_statistics=False).x
    mean = float(x.mean()) if mean is None else mean
    std = float(x.std()) if std is None else std

    return (x - mean) / std, mean, std


def _train(model: CNF, train: Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float | None:
    if steps == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = None
    for _ in range(steps):
        batch = train[torch.randint(train.shape[0], (batch_size,), generator=generator)]
        loss = -model.log_prob(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return float(loss.detach())


def _hidden_widths(model: CNF) -> list[int]:
    return [layer.out_features for layer in model.blocks[0].field.layers[:-1]]


def _build_variants(dense: CNF, ratio: float) -> tuple[dict[str, CNF], list[str]]:
    """Prune copies of `dense` and return the models by name with the messages of the pruning warnings.

    Whole neurons allow only discrete ratios, so `prune_structured` may warn that it reached a
    ratio near the requested one. The report keeps those messages and the reached ratios.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structured = copy.deepcopy(dense)
        prune_structured(structured, ratio)
        unstructured = copy.deepcopy(dense)
        prune_unstructured(unstructured, ratio)
    models = {
        "dense": dense,
        "structured, exported": export_structured(structured),
        "structured, masked": structured,
        "unstructured, masked": unstructured,
    }

    return models, [str(warning.message) for warning in caught]


def _timed_call(model: CNF, call) -> tuple[float, int, Tensor]:
    model.reset_nfe()
    start = time.perf_counter()
    with torch.no_grad():
        output = call()

    return time.perf_counter() - start, model.nfe_forward, output


def _measure(models: dict[str, CNF], test: Tensor, args: argparse.Namespace) -> dict[str, dict]:
    names = list(models)
    records = {name: {"log_prob": [], "sample": []} for name in names}
    outputs: dict[str, Tensor] = {}

    for repeat in range(args.warmup + args.repeats):
        # Rotate the order so that no model always runs first or last in a repeat.
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            model = models[name]
            seconds, nfe, log_prob = _timed_call(model, lambda: model.log_prob(test))
            outputs[name] = log_prob
            generator = torch.Generator().manual_seed(args.seed + 1)
            sample_seconds, sample_nfe, _ = _timed_call(model, lambda: model.sample(args.samples, generator))
            if repeat >= args.warmup:
                records[name]["log_prob"].append((seconds, nfe))
                records[name]["sample"].append((sample_seconds, sample_nfe))

    summary = {}
    dense_total = count_parameters(models["dense"]).total
    for name in names:
        counts = count_parameters(models[name])
        row = {
            "total_params": counts.total,
            "nonzero_params": counts.nonzero,
            "prune_ratio": 1.0 - counts.nonzero / dense_total,
            "hidden_widths": _hidden_widths(models[name]),
            "test_nll": float(-outputs[name].mean()),
        }
        for operation, values in records[name].items():
            seconds = [value[0] for value in values]
            nfes = [value[1] for value in values]
            row[f"{operation}_seconds_median"] = statistics.median(seconds)
            row[f"{operation}_seconds_min"] = min(seconds)
            row[f"{operation}_nfe"] = statistics.median(nfes)
            row[f"{operation}_seconds_per_nfe"] = statistics.median(s / max(n, 1) for s, n in values)
        summary[name] = row
    summary["structured, exported"]["max_abs_log_prob_difference_to_masked"] = float(
        (outputs["structured, exported"] - outputs["structured, masked"]).abs().max()
    )

    return summary


def _markdown(summary: dict[str, dict]) -> str:
    dense = summary["dense"]
    lines = [
        "| model | hidden widths | parameters (total / nonzero) | prune ratio | test NLL | log_prob s (NFE) "
        "| log_prob s/NFE | sample s (NFE) | sample s/NFE | log_prob vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        speedup = dense["log_prob_seconds_median"] / row["log_prob_seconds_median"]
        widths = "-".join(map(str, row["hidden_widths"]))
        lines.append(
            f"| {name} | {widths} | {row['total_params']:,} / {row['nonzero_params']:,} "
            f"| {row['prune_ratio']:.3f} | {row['test_nll']:.3f} "
            f"| {row['log_prob_seconds_median']:.3f} ({row['log_prob_nfe']:g}) "
            f"| {row['log_prob_seconds_per_nfe'] * 1e3:.2f} ms "
            f"| {row['sample_seconds_median']:.3f} ({row['sample_nfe']:g}) "
            f"| {row['sample_seconds_per_nfe'] * 1e3:.2f} ms | {speedup:.2f}x |"
        )

    return "\n".join(lines)


def main() -> None:
    args = _parse_arguments()
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)

    # Data: the toy set scaled by the scalar mean and std of the training points. The test
    # points come from another seed and use the same scaling.
    train, mean, std = _normalized_toy(args.dataset, 20_000, args.seed)
    test, _, _ = _normalized_toy(args.dataset, args.eval_size, args.seed + 1, mean, std)

    torch.manual_seed(args.seed)
    dense = build_cnf(2, "mlp", tuple(args.hidden), "tanh", solver={"method": "dopri5", "rtol": 1e-5, "atol": 1e-5})
    start = time.perf_counter()
    train_loss = _train(dense, train, args.train_steps, args.train_batch, args.lr, args.seed)
    train_seconds = time.perf_counter() - start

    models, pruning_warnings = _build_variants(dense, args.prune_ratio)
    summary = _measure(models, test, args)
    machine["load_average_end"] = os.getloadavg()

    report = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "machine": machine,
        "base_weights": "random initial weights" if args.train_steps == 0 else
        f"trained for {args.train_steps} Adam steps (final train NLL {train_loss:.3f}, {train_seconds:.0f} s)",
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "pruning_warnings": pruning_warnings,
        "models": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(_markdown(summary))
    print(f"\nbase weights: {report['base_weights']}\nmachine: {json.dumps(machine)}\nfull results: {args.out}")


if __name__ == "__main__":
    main()
