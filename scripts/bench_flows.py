"""Time CNF training steps of sparse_cnf beside FFJORD's reference code on the same 2-D model and data.

The model is FFJORD's 2-D toy setting: an MLP field 2-64-64-64-2 with tanh and time as an extra
input column of every layer, T = 1, dopri5 with rtol = atol = 1e-5, batch 1000 from the
`8gaussians` toy set, Adam. For each combination of torch threads, divergence (exact or
Hutchinson with Gaussian noise) and gradient (direct backpropagation through the solver, or
the adjoint), the script trains sparse_cnf's model and, with `--reference`, FFJORD's model in
lock step in one process. Both start from the same weights and see the same batches and the
same Hutchinson noise, and iteration i of one runs right after iteration i of the other, so
load from other processes hits both alike. A training iteration is zero_grad, forward solve,
backward pass and one Adam step. The script reports the median and mean seconds per
iteration after the warm-up, the forward and backward NFE, and the test NLL (exact trace,
nats) after the last iteration.

FFJORD's code is not a dependency and is never imported by the package. `--reference PATH`
names a checkout of https://github.com/rtqichen/ffjord, whose `lib/` folder the script puts
on sys.path at run time. The script drives its `ODEnet` (layer type "concat"), `ODEfunc`
(divergence "brute_force" or "approximate") and `CNF` classes, with two run-time shims that
change no file of that checkout:

- FFJORD's `lib/layers/cnf.py` binds the name `odeint` to torchdiffeq's `odeint_adjoint`, so its
  CNF always uses the adjoint. For direct backpropagation the script rebinds that module
  attribute to `torchdiffeq.odeint`, and back to `odeint_adjoint` for the adjoint runs.
- FFJORD's `ODEfunc.forward` calls `torch.tensor(t)` on a tensor, which makes torch 2.13 emit
  a UserWarning at every evaluation. The script filters that one warning.

Run it from the repository root with the package importable (`pip install -e .`).

Example:
    python scripts/bench_flows.py --reference /tmp/ffjord --iterations 100 --out .bench/flows.json
"""

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchdiffeq
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from sparse_cnf.data import make_toy
from sparse_cnf.flows import build_cnf, standard_normal_log_prob

from bench_machine import git_commit, machine_info

HIDDEN = (64, 64, 64)
DIVERGENCES = ("exact", "hutchinson")
GRADIENTS = ("direct", "adjoint")


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="path of a checkout of FFJORD's repository; without it only sparse_cnf runs")
    parser.add_argument("--iterations", type=int, default=100, help="training iterations per configuration")
    parser.add_argument("--warmup", type=int, default=5,
                        help="first iterations left out of the median and mean seconds per iteration")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to run")
    parser.add_argument("--divergence", nargs="+", choices=DIVERGENCES, default=list(DIVERGENCES),
                        help="divergence estimators to run")
    parser.add_argument("--gradient", nargs="+", choices=GRADIENTS, default=list(GRADIENTS),
                        help="gradient methods to run: backpropagation through the solver, or the adjoint")
    parser.add_argument("--batch-size", type=int, default=1000, help="training points per iteration")
    parser.add_argument("--test-size", type=int, default=5000, help="points of the test set for the final NLL")
    parser.add_argument("--dataset", default="8gaussians", help="toy set of sparse_cnf.data.make_toy")
    parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of dopri5")
    parser.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of dopri5")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data and noise")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="extra steps per model under torch.profiler after training; 0 skips profiling")
    parser.add_argument("--out", type=Path, default=Path(".bench/flows.json"), help="JSON file for the results")
    args = parser.parse_args()

    if args.iterations <= args.warmup:
        parser.error(f"--iterations must exceed --warmup ({args.warmup}); got {args.iterations}.")
    if any(threads < 1 for threads in args.threads):
        parser.error(f"--threads must contain positive counts; got {args.threads}.")
    if args.reference is not None and not (args.reference / "lib" / "layers" / "cnf.py").is_file():
        parser.error(
            f"--reference {args.reference}: lib/layers/cnf.py not found. Pass the root of a checkout of "
            "https://github.com/rtqichen/ffjord."
        )

    return args


# ------------------------------------------------------------------------------------------------
# The two implementations behind one interface


class _OursFlow:
    """sparse_cnf's CNF with the step, NFE and evaluation calls the benchmark needs."""

    name = "sparse_cnf"

    def __init__(self, divergence: str, adjoint: bool, rtol: float, atol: float):
        self.solver = {"method": "dopri5", "rtol": rtol, "atol": atol, "adjoint": adjoint}
        self.model = build_cnf(2, "mlp", HIDDEN, "tanh", divergence=divergence, noise="gaussian", solver=self.solver)

    def field_linears(self) -> list[nn.Linear]:
        return list(self.model.blocks[0].field.layers)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def loss(self, x: Tensor) -> Tensor:
        self.model.reset_nfe()
        return -self.model.log_prob(x).mean()

    def nfe(self) -> tuple[int, int]:
        return self.model.nfe_forward, self.model.nfe_backward

    def test_nll(self, x: Tensor) -> float:
        # The test NLL always uses the exact trace, so a Hutchinson-trained model is copied
        # into an exact one.
        evaluator = build_cnf(2, "mlp", HIDDEN, "tanh", divergence="exact", solver=self.solver)
        evaluator.load_state_dict(self.model.state_dict())
        with torch.no_grad():
            return float(-evaluator.log_prob(x).mean())


class _ReferenceFlow:
    """FFJORD's CNF of the same model, driven through its own classes."""

    name = "ffjord"

    def __init__(self, lib_layers, divergence: str, rtol: float, atol: float):
        net = lib_layers.ODEnet(
            hidden_dims=HIDDEN, input_shape=(2,), strides=None, conv=False, layer_type="concat", nonlinearity="tanh"
        )
        divergence_fn = "brute_force" if divergence == "exact" else "approximate"
        self.odefunc = lib_layers.ODEfunc(diffeq=net, divergence_fn=divergence_fn, rademacher=False)
        self.model = lib_layers.CNF(odefunc=self.odefunc, T=1.0, train_T=False, solver="dopri5", atol=atol, rtol=rtol)
        self.net = net
        self.forward_nfe = 0

    def field_linears(self) -> list[nn.Linear]:
        return [layer._layer for layer in self.net.layers]

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def _log_prob(self, x: Tensor) -> Tensor:
        # FFJORD integrates -Tr(df/dz), so log p(x) = log N(z; 0, I) - delta_logp.
        z, delta_logp = self.model(x, torch.zeros(x.shape[0], 1, dtype=x.dtype))
        return standard_normal_log_prob(z) - delta_logp.squeeze(1)

    def loss(self, x: Tensor) -> Tensor:
        loss = -self._log_prob(x).mean()
        self.forward_nfe = int(self.odefunc.num_evals())
        return loss

    def nfe(self) -> tuple[int, int]:
        # FFJORD's counter counts field evaluations of both solves of an iteration. Direct
        # backpropagation evaluates no field, so its backward count is 0.
        return self.forward_nfe, int(self.odefunc.num_evals()) - self.forward_nfe

    def test_nll(self, x: Tensor) -> float:
        # In eval mode FFJORD's ODEfunc computes the exact trace for 2-D data whatever the
        # divergence it trains with.
        self.model.eval()
        try:
            with torch.no_grad():
                return float(-self._log_prob(x).mean())
        finally:
            self.model.train()


def _load_reference(path: Path):
    """Import FFJORD's `lib.layers` from the checkout at `path` and return it with its cnf module."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    lib_layers = importlib.import_module("lib.layers")
    cnf_module = importlib.import_module("lib.layers.cnf")
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)

    return lib_layers, cnf_module


def _copy_weights(source: _OursFlow, target: _ReferenceFlow) -> None:
    # Both fields put t in input column 0 of every linear layer, so the weights map one to one.
    with torch.no_grad():
        for ours, theirs in zip(source.field_linears(), target.field_linears(), strict=True):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)


# ------------------------------------------------------------------------------------------------
# Training in lock step


def _train_step(flow, optimizer: torch.optim.Optimizer, x: Tensor, noise_seed: int) -> dict:
    # Both implementations draw their Hutchinson noise from the global generator, so the same
    # seed gives them the same noise.
    torch.manual_seed(noise_seed)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    loss = flow.loss(x)
    loss.backward()
    optimizer.step()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    nfe_forward, nfe_backward = flow.nfe()

    return {"seconds": wall, "cpu_seconds": cpu, "loss": float(loss.detach()),
            "nfe_forward": nfe_forward, "nfe_backward": nfe_backward}


def _summarize(steps: list[dict], warmup: int, test_nll: float, initial_test_nll: float) -> dict:
    timed = steps[warmup:]
    seconds = [step["seconds"] for step in timed]

    return {
        "seconds_per_iteration_median": statistics.median(seconds),
        "seconds_per_iteration_mean": statistics.fmean(seconds),
        "cpu_seconds_per_iteration_median": statistics.median(step["cpu_seconds"] for step in timed),
        "seconds_total": sum(step["seconds"] for step in steps),
        "nfe_forward_mean": statistics.fmean(step["nfe_forward"] for step in timed),
        "nfe_backward_mean": statistics.fmean(step["nfe_backward"] for step in timed),
        "nfe_forward_last": steps[-1]["nfe_forward"],
        "nfe_backward_last": steps[-1]["nfe_backward"],
        "seconds_per_forward_nfe_median": statistics.median(
            step["seconds"] / max(step["nfe_forward"], 1) for step in timed
        ),
        "train_loss_last": steps[-1]["loss"],
        "test_nll_initial": initial_test_nll,
        "test_nll": test_nll,
        "steps": steps,
    }


def _profile_top_ops(flow, optimizer: torch.optim.Optimizer, x: Tensor, steps: int, seed: int) -> list[dict]:
    """Run `steps` more training steps under torch.profiler; return the 8 ops with the most self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for step in range(steps):
            _train_step(flow, optimizer, x, seed + step)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:8]

    return [{"op": event.key, "self_cpu_share": event.self_cpu_time_total / total, "calls": event.count}
            for event in top]


def _run_configuration(
    threads: int, divergence: str, gradient: str, train: Tensor, test: Tensor, args: argparse.Namespace, reference
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    flows = [_OursFlow(divergence, gradient == "adjoint", args.rtol, args.atol)]
    if reference is not None:
        lib_layers, cnf_module = reference
        cnf_module.odeint = torchdiffeq.odeint_adjoint if gradient == "adjoint" else torchdiffeq.odeint
        flows.append(_ReferenceFlow(lib_layers, divergence, args.rtol, args.atol))
        _copy_weights(flows[0], flows[1])
    optimizers = [torch.optim.Adam(flow.parameters(), lr=args.lr) for flow in flows]
    initial_nll = [flow.test_nll(test) for flow in flows]

    steps: list[list[dict]] = [[] for _ in flows]
    for iteration in range(args.iterations):
        batch = train[iteration * args.batch_size : (iteration + 1) * args.batch_size]
        # Alternate which implementation goes first, so neither always runs on a warm cache.
        order = range(len(flows)) if iteration % 2 == 0 else reversed(range(len(flows)))
        for index in order:
            steps[index].append(_train_step(flows[index], optimizers[index], batch, args.seed * 100_003 + iteration))

    result = {"threads": threads, "divergence": divergence, "gradient": gradient}
    for flow, optimizer, flow_steps, nll in zip(flows, optimizers, steps, initial_nll):
        result[flow.name] = _summarize(flow_steps, args.warmup, flow.test_nll(test), nll)
        if args.profile_steps > 0:
            result[flow.name]["profile"] = _profile_top_ops(
                flow, optimizer, train[: args.batch_size], args.profile_steps, args.seed
            )
    if reference is not None:
        result["ratio_median"] = (
            result["sparse_cnf"]["seconds_per_iteration_median"] / result["ffjord"]["seconds_per_iteration_median"]
        )
        result["ratio_mean"] = (
            result["sparse_cnf"]["seconds_per_iteration_mean"] / result["ffjord"]["seconds_per_iteration_mean"]
        )

    return result


# ------------------------------------------------------------------------------------------------
# Machine and report


def _cross_ratios(results: list[dict]) -> list[dict]:
    """Pair sparse_cnf with direct backpropagation against FFJORD with the adjoint, which its CNF class always uses."""
    pairs = []
    for direct in results:
        if direct["gradient"] != "direct" or "ffjord" not in direct:
            continue
        for adjoint in results:
            if adjoint["gradient"] == "adjoint" and "ffjord" in adjoint and (
                adjoint["threads"], adjoint["divergence"]) == (direct["threads"], direct["divergence"]):
                ours, theirs = direct["sparse_cnf"], adjoint["ffjord"]
                pairs.append({
                    "threads": direct["threads"],
                    "divergence": direct["divergence"],
                    "ratio_median": ours["seconds_per_iteration_median"] / theirs["seconds_per_iteration_median"],
                    "sparse_cnf_direct_test_nll": ours["test_nll"],
                    "ffjord_adjoint_test_nll": theirs["test_nll"],
                })

    return pairs


def _markdown(results: list[dict], cross: list[dict]) -> str:
    lines = [
        "| threads | divergence | gradient | implementation | s/iter median | s/iter mean | NFE fwd (mean, last) "
        "| NFE bwd (mean, last) | test NLL | ours/ref (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for name in ("sparse_cnf", "ffjord"):
            if name not in result:
                continue
            row = result[name]
            ratio = f"{result['ratio_median']:.2f}" if name == "sparse_cnf" and "ratio_median" in result else ""
            lines.append(
                f"| {result['threads']} | {result['divergence']} | {result['gradient']} | {name} "
                f"| {row['seconds_per_iteration_median']:.3f} | {row['seconds_per_iteration_mean']:.3f} "
                f"| {row['nfe_forward_mean']:.1f}, {row['nfe_forward_last']} "
                f"| {row['nfe_backward_mean']:.1f}, {row['nfe_backward_last']} | {row['test_nll']:.3f} | {ratio} |"
            )
    if cross:
        lines += ["", "| threads | divergence | sparse_cnf direct / ffjord adjoint (median) | test NLL (ours, ref) |",
                  "|---|---|---|---|"]
        for pair in cross:
            lines.append(
                f"| {pair['threads']} | {pair['divergence']} | {pair['ratio_median']:.2f} "
                f"| {pair['sparse_cnf_direct_test_nll']:.3f}, {pair['ffjord_adjoint_test_nll']:.3f} |"
            )

    return "\n".join(lines)


def _command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def main() -> None:
    args = _parse_arguments()
    machine = machine_info()
    reference = _load_reference(args.reference) if args.reference is not None else None

    needed = args.iterations * args.batch_size
    train = make_toy(args.dataset, needed, seed=args.seed, with_mode_statistics=False).x
    test = make_toy(args.dataset, args.test_size, seed=args.seed + 1, with_mode_statistics=False).x

    results = []
    for threads in args.threads:
        for divergence in args.divergence:
            for gradient in args.gradient:
                results.append(_run_configuration(threads, divergence, gradient, train, test, args, reference))
                summary = {key: value for key, value in results[-1].items() if not isinstance(value, dict)}
                print(json.dumps(summary), file=sys.stderr, flush=True)
    machine["load_average_end"] = os.getloadavg()
    cross = _cross_ratios(results)

    report = {
        "command": _command(),
        "machine": machine,
        "reference": None if args.reference is None else {
            "path": str(args.reference), "commit": git_commit(args.reference)},
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "results": results,
        "sparse_cnf_direct_vs_ffjord_adjoint": cross,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(_markdown(results, cross))
    print(f"\nmachine: {json.dumps(machine)}\nfull results: {args.out}")


if __name__ == "__main__":
    main()
