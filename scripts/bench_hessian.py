"""Time sparse_cnf's Hessian analysis of a toy CNF side by side with PyHessian's on the same model and data.

Both run in one process on the same trained (and optionally pruned) CNF and the same fixed
data subset, with the direct (non-adjoint) dopri5 solver. PyHessian (`pip install pyhessian`,
not a dependency of sparse_cnf) estimates the top eigenvalue by power iteration and the trace
by Hutchinson's estimator. sparse_cnf uses Lanczos (ARPACK) for lambda_max and lambda_min, and
Hutchinson for the trace. The script prints the numbers as JSON and writes them to `--out`.
Run it from the repository root with the package importable (`pip install -e .` or `PYTHONPATH=.`).

Example:
    python scripts/bench_hessian.py --train-steps 100 --prune-ratio 0.5 --out .bench/hessian.json
"""

import argparse
import importlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_cnf.analysis import hessian_stats
from sparse_cnf.data.toy import make_toy
from sparse_cnf.flows import build_cnf


class _NegativeLogLikelihood(nn.Module):
    """Per-sample NLL of a CNF as a module, the (model, criterion) shape PyHessian expects."""

    def __init__(self, cnf: nn.Module):
        super().__init__()

        self.cnf = cnf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.cnf.log_prob(x)


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64, 64], help="hidden widths of the MLP field")
    parser.add_argument("--train-points", type=int, default=10_000, help="training points of the 'gaussians' toy set")
    parser.add_argument("--train-steps", type=int, default=100, help="Adam steps before the analysis (0: untrained)")
    parser.add_argument("--prune-ratio", type=float, default=0.0, help="global magnitude pruning before the analysis")
    parser.add_argument("--subset", type=int, default=256, help="points in the fixed data subset of the Hessian loss")
    parser.add_argument("--max-iterations", type=int, default=100, help="power-iteration and Hutchinson vector limit")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of PyHessian's power iteration and of both trace estimates")
    parser.add_argument("--num-smallest", type=int, default=6, help="smallest eigenvalues sparse_cnf's Lanczos computes")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(".bench/hessian.json"), help="JSON file for the results")

    return parser.parse_args()


def _train(cnf: nn.Module, x: torch.Tensor, steps: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(cnf.parameters(), lr=1e-3)
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        batch = x[torch.randint(x.shape[0], (512,), generator=generator)]
        loss = -cnf.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return float(loss.detach())


def _run_pyhessian(model: nn.Module, subset: torch.Tensor, args: argparse.Namespace) -> dict:
    # The package re-exports the class `hessian` under the module's own name, so fetch the module.
    pyhessian_module = importlib.import_module("pyhessian.hessian")

    counter = {"hvp": 0}
    original_product = pyhessian_module.hessian_vector_product

    def counted_product(*inputs):
        counter["hvp"] += 1
        return original_product(*inputs)

    pyhessian_module.hessian_vector_product = counted_product
    previous_dtype = torch.get_default_dtype()
    # PyHessian draws its vectors with the default dtype, so it must match the model's.
    torch.set_default_dtype(subset.dtype)
    torch.manual_seed(args.seed)
    try:
        start = time.perf_counter()
        analysis = pyhessian_module.hessian(
            _NegativeLogLikelihood(model), lambda output, _: output.mean(), data=(subset, subset), cuda=False
        )
        setup_seconds = time.perf_counter() - start

        start = time.perf_counter()
        top_eigenvalues, _ = analysis.eigenvalues(maxIter=args.max_iterations, tol=args.tol, top_n=1)
        eigenvalue_seconds = time.perf_counter() - start
        eigenvalue_hvp = counter["hvp"]

        start = time.perf_counter()
        trace_samples = analysis.trace(maxIter=args.max_iterations, tol=args.tol)
        trace_seconds = time.perf_counter() - start
    finally:
        pyhessian_module.hessian_vector_product = original_product
        torch.set_default_dtype(previous_dtype)
    # PyHessian fills .grad through backward(create_graph=True). Clearing it breaks the reference cycle.
    for parameter in model.parameters():
        parameter.grad = None

    return {
        "lambda_top": float(top_eigenvalues[0]),
        "trace": float(np.mean(trace_samples)),
        "trace_stderr": float(np.std(trace_samples, ddof=1) / math.sqrt(len(trace_samples))),
        "trace_samples": len(trace_samples),
        "hvp_eigenvalue": eigenvalue_hvp,
        "hvp_trace": counter["hvp"] - eigenvalue_hvp,
        "seconds_setup": setup_seconds,
        "seconds_eigenvalue": eigenvalue_seconds,
        "seconds_trace": trace_seconds,
        "seconds_total": setup_seconds + eigenvalue_seconds + trace_seconds,
    }


def _run_sparse_cnf(model: nn.Module, subset: torch.Tensor, args: argparse.Namespace) -> dict:
    stats = hessian_stats(
        model,
        lambda m: -m.log_prob(subset).mean(),
        method="lanczos",
        seed=args.seed,
        trace_rtol=args.tol,
        trace_max_samples=args.max_iterations,
        num_smallest=args.num_smallest,
    )
    seconds = stats.timings

    return {
        "lambda_max": stats.lambda_max,
        "lambda_min": stats.lambda_min,
        "condition": stats.condition,
        "condition_positive": stats.condition_positive,
        "trace": stats.trace,
        "trace_stderr": stats.trace_stderr,
        "trace_samples": stats.trace_samples,
        "num_coordinates": stats.num_coordinates,
        "hvp_total": stats.num_hvp,
        "seconds_setup": seconds["gradient"],
        "seconds_lambda_max": seconds["lambda_max"],
        "seconds_lambda_min": seconds["lambda_min"],
        "seconds_trace": seconds["trace"],
        "seconds_total": stats.seconds,
    }


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    args = _parse_arguments()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)

    # Data: the 'gaussians' toy set, scaled by one scalar mean and std as the datamodule does.
    data = make_toy("gaussians", args.train_points + args.subset, seed=args.seed).x.to(dtype)
    data = (data - data.mean()) / data.std()
    train, subset = data[: args.train_points], data[args.train_points :]

    # Model: FFJORD-style MLP field, direct dopri5 solver, trained briefly, optionally pruned.
    cnf = build_cnf(2, "mlp", tuple(args.hidden), "tanh", solver={"method": "dopri5", "rtol": 1e-5, "atol": 1e-5})
    cnf = cnf.to(dtype)
    start = time.perf_counter()
    train_loss = _train(cnf, train, args.train_steps, args.seed)
    train_seconds = time.perf_counter() - start
    if args.prune_ratio > 0:
        from sparse_cnf.pruning import prune_unstructured

        prune_unstructured(cnf, args.prune_ratio)
    total = sum(p.numel() for p in cnf.parameters())

    ours = _run_sparse_cnf(cnf, subset, args)
    theirs = _run_pyhessian(cnf, subset, args)

    result = {
        "command": "python scripts/bench_hessian.py " + " ".join(
            f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in vars(args).items()
        ),
        "machine": _machine(),
        "model": {"hidden": args.hidden, "parameters": total, "train_steps": args.train_steps,
                  "train_loss": train_loss, "train_seconds": train_seconds, "prune_ratio": args.prune_ratio},
        "sparse_cnf": ours,
        "pyhessian": theirs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
