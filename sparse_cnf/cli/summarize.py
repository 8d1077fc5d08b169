"""`sparse-cnf-summarize SWEEP_DIR`: one table and one set of plots from every job of a sweep."""

__all__ = ["collect_rows", "main", "mode_table", "nll_table", "summarize"]

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sparse_cnf.lit.io import atomic_write_bytes

log = logging.getLogger(__name__)

# Columns that identify a job in the tables, read from each job's .hydra/config.yaml.
_JOB_KEYS = {
    "dataset": ("dataset", "name"),
    "method": ("prune", "method"),
    "seed": ("seed",),
    "field": ("model", "field"),
}


def _lookup(config: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def collect_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Return every round row of every job under `sweep_dir`, tagged with the job's settings.

    A job is a folder with a `results.json`; its `.hydra/config.yaml`, when present, gives the
    dataset, prune method, seed and field. Jobs that failed before their first round have no
    results file and are reported in the log.

    Raises:
        FileNotFoundError: When `sweep_dir` does not exist or contains no results.json.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist; pass the folder a multirun wrote (multirun/DATE/TIME).")

    jobs = []
    for results in sorted(sweep_dir.rglob("results.json")):
        job_dir = results.parent
        config_path = job_dir / ".hydra" / "config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(config_path)) if config_path.is_file() else {}
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_path)) if overrides_path.is_file() else []
        jobs.append((job_dir, config, dict(o.split("=", 1) for o in overrides if "=" in o)))

    # Overrides that differ between jobs, other than the seed, tell settings apart: jobs are
    # averaged together only when they agree on all of them.
    keys = sorted({key for _, _, overrides in jobs for key in overrides})
    swept = [k for k in keys if k != "seed" and len({overrides.get(k) for _, _, overrides in jobs}) > 1]

    rows: list[dict[str, Any]] = []
    for job_dir, config, overrides in jobs:
        tags = {name: _lookup(config, path) for name, path in _JOB_KEYS.items()}
        tags["setting"] = ",".join(f"{k}={overrides.get(k, '')}" for k in swept)
        tags["job"] = str(job_dir.relative_to(sweep_dir))
        for row in json.loads((job_dir / "results.json").read_text()):
            rows.append({**tags, **row})

    job_dirs = {p.parent for p in sweep_dir.rglob(".hydra")}
    missing = sorted(str(d.relative_to(sweep_dir)) for d in job_dirs if not (d / "results.json").is_file())
    if missing:
        log.warning("jobs without results.json (failed or still running): %s", ", ".join(missing))
    if not rows:
        raise FileNotFoundError(f"no results.json under {sweep_dir}; has any job finished a round?")
    return rows


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]


def _mean_std(values: Sequence[Any]) -> tuple[float, float, int]:
    clean = _finite(values)
    if not clean:
        return math.nan, math.nan, 0
    std = statistics.stdev(clean) if len(clean) > 1 else math.nan
    return statistics.fmean(clean), std, len(clean)


def mode_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Good-sample share at 2 and 3 std by dataset, method, setting and target prune ratio.

    Each entry is the mean and std over the seeds of jobs that share every other swept override.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if "good_2std" in row:
            key = (row.get("dataset"), row.get("method"), row.get("setting", ""), round(float(row["target_ratio"]), 4))
            groups[key].append(row)

    table = []
    for (dataset, method, setting, ratio), members in sorted(groups.items(), key=lambda item: tuple(str(k) for k in item[0][:3]) + (item[0][3],)):
        entry: dict[str, Any] = {"dataset": dataset, "method": method, "setting": setting, "prune_ratio": ratio}
        for key in ("good_2std", "good_3std", "modes_2std", "test_nll"):
            mean, std, count = _mean_std([m.get(key) for m in members])
            entry[key] = mean
            entry[f"{key}_std"] = std
        entry["seeds"] = count
        table.append(entry)
    return table


def nll_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Dense and best pruned test NLL, with nonzero parameters, by dataset, method and setting.

    "Best pruned" is the round with the lowest mean test NLL over seeds among the prune rounds
    (round >= 1), as the Sparse Flows tables report it.
    """
    by_job_group: dict[tuple, dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_job_group[(row.get("dataset"), row.get("method"), row.get("setting", ""))][int(row["round"])].append(row)

    table = []
    for (dataset, method, setting), rounds in sorted(by_job_group.items(), key=lambda item: tuple(str(k) for k in item[0])):
        dense = rounds.get(0, [])
        pruned = {r: members for r, members in rounds.items() if r > 0}
        entry: dict[str, Any] = {"dataset": dataset, "method": method, "setting": setting}
        entry["dense_test_nll"], entry["dense_test_nll_std"], entry["seeds"] = _mean_std([m.get("test_nll") for m in dense])
        entry["dense_params"] = dense[0]["nonzero_params"] if dense else None
        if pruned:
            best_round = min(pruned, key=lambda r: _mean_std([m.get("test_nll") for m in pruned[r]])[0])
            best = pruned[best_round]
            entry["pruned_test_nll"], entry["pruned_test_nll_std"], _ = _mean_std([m.get("test_nll") for m in best])
            entry["pruned_params"] = round(statistics.fmean(m["nonzero_params"] for m in best))
            entry["pruned_ratio"] = statistics.fmean(m["prune_ratio"] for m in best)
        table.append(entry)
    return table


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(table: Sequence[Mapping[str, Any]]) -> str:
    if not table:
        return "(no rows)\n"
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _csv_bytes(table: Sequence[Mapping[str, Any]]) -> bytes:
    text = io.StringIO()
    columns: list[str] = []
    for row in table:
        columns.extend(k for k in row if k not in columns)
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return text.getvalue().encode()


def summarize(sweep_dir: str | Path, out_dir: str | Path | None = None, plots: bool = True) -> Path:
    """Write `summary.md`, `rows.csv`, `modes.csv`, `nll.csv` and sweep plots for a sweep folder.

    Args:
        sweep_dir: The folder of a Hydra multirun (or any folder with job folders inside).
        out_dir: Where to write; default `<sweep_dir>/summary`.
        plots: Also draw NLL, good-sample share and Hessian statistics against prune ratio and
            nonzero parameters.

    Returns:
        The path of `summary.md`.
    """
    from sparse_cnf.analysis import plot_sweep

    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "summary"
    rows = collect_rows(sweep_dir)
    modes = mode_table(rows)
    nll = nll_table(rows)

    atomic_write_bytes(out_dir / "rows.csv", _csv_bytes(rows))
    atomic_write_bytes(out_dir / "modes.csv", _csv_bytes(modes))
    atomic_write_bytes(out_dir / "nll.csv", _csv_bytes(nll))
    text = [f"# Summary of {sweep_dir}\n", f"{len(rows)} rows from {len({r['job'] for r in rows})} jobs.\n"]
    text += ["## Good-sample share by prune ratio (mean and std over seeds)\n", _markdown(modes)]
    text += ["## Test NLL and nonzero parameters: dense and best pruned round\n", _markdown(nll)]
    if plots:
        group_key = "setting" if any(row["setting"] for row in rows) else "dataset"
        paths = plot_sweep(rows, out_dir, group_key=group_key)
        text += ["## Plots\n"] + [f"![{p.stem}]({p.name})\n" for p in paths]
    summary = out_dir / "summary.md"
    atomic_write_bytes(summary, "\n".join(text).encode())
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `sparse-cnf-summarize`."""
    parser = argparse.ArgumentParser(prog="sparse-cnf-summarize", description=__doc__)
    parser.add_argument("sweep_dir", help="folder of a multirun (multirun/DATE/TIME) or of several runs")
    parser.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR/summary)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        summary = summarize(args.sweep_dir, args.out, plots=not args.no_plots)
    except FileNotFoundError as error:
        parser.exit(2, f"sparse-cnf-summarize: error: {error}\n")
    log.info("summary: %s", summary)
    sys.stdout.write(summary.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
