"""Print, or run, the Hydra multirun command of each Sparse Flows sweep (methods x seeds per preset).

Every sweep trains the dense model and then prunes it along the preset's published schedule, once
per prune method (unstructured weights, structured neurons) and seed. Usage:

    python scripts/reproduce.py                       # print every command
    python scripts/reproduce.py power --data-root ~/maf/data --run
    python scripts/reproduce.py gaussians --seeds 0 1 2 --run -- hydra/launcher=local

Arguments after `--` are appended to the command as Hydra overrides.
"""

import argparse
import shlex
import subprocess
import sys

# Paper sweeps: preset -> default seeds. Sparse Flows ran one network per tabular set, three for
# MINIBOONE (numNets: 3 in its config), one for MNIST. The toy mode-collapse table needs several
# seeds, so the toy sweeps default to three.
SWEEPS: dict[str, tuple[int, ...]] = {
    "gaussians": (0, 1, 2),
    "gaussians_spiral": (0, 1, 2),
    "spirals": (0, 1, 2),
    "power": (0,),
    "gas": (0,),
    "hepmass": (0,),
    "miniboone": (0, 1, 2),
    "bsds300": (0,),
    "mnist": (0,),
}
TOY = ("gaussians", "gaussians_spiral", "spirals")
METHODS = ("unstructured", "structured")


def build_command(
    preset: str,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    data_root: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """Build the `sparse-cnf-train --multirun` argument list of one sweep.

    Raises:
        ValueError: on an unknown preset or method.
    """
    if preset not in SWEEPS:
        raise ValueError(f"preset must be one of {', '.join(SWEEPS)}; got {preset!r}.")
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods must be among {', '.join(METHODS)}; got {', '.join(unknown)}.")
    seeds = list(SWEEPS[preset] if seeds is None else seeds)

    command = [
        "sparse-cnf-train",
        "--multirun",
        f"experiment={preset}",
        f"prune.method={','.join(methods)}",
        f"seed={','.join(str(s) for s in seeds)}",
    ]
    if preset not in TOY:
        command.append(f"dataset.root={data_root or 'ROOT'}")

    return command + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    """Print the selected sweeps' commands and run them one after another with --run."""
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help=f"sweeps to print or run, from {', '.join(SWEEPS)}; none: all")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds of every selected sweep; default: the sweep's own")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="prune methods; default: both")
    parser.add_argument("--data-root", help="MAF `data` folder or MNIST IDX folder (dataset.root)")
    parser.add_argument("--run", action="store_true", help="run the commands instead of only printing them")
    args = parser.parse_args(argv)

    presets = args.presets or list(SWEEPS)
    for preset in presets:
        if preset not in SWEEPS:
            parser.error(f"unknown preset {preset!r}; choose from {', '.join(SWEEPS)}.")
        if args.run and preset not in TOY and not args.data_root:
            parser.error(f"preset {preset!r} reads files: pass --data-root (see scripts/download_data.py).")

    for preset in presets:
        command = build_command(preset, args.seeds, args.methods, args.data_root, extra)
        print(shlex.join(command), flush=True)
        if args.run:
            completed = subprocess.run(command, check=False)
            if completed.returncode != 0:
                print(f"sweep {preset} failed with exit code {completed.returncode}", file=sys.stderr)
                return completed.returncode

    return 0


if __name__ == "__main__":
    sys.exit(main())
