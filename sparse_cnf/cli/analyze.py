"""`sparse-cnf-analyze`: good-sample share, Hessian statistics and pictures of one checkpoint."""

__all__ = ["analyze", "main"]

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from sparse_cnf.cli.common import CONFIG_DIR, build_datamodule, configure_environment, quiet_known_warnings, to_plain
from sparse_cnf.lit.io import atomic_write_bytes

log = logging.getLogger(__name__)


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Analyse the checkpoint `cfg.ckpt_path` and write `analysis.json` (and plots) to `cfg.run_dir`.

    Args:
        cfg: The composed `analyze.yaml` config.

    Returns:
        The analysis columns, as in a round's row of `results.json`, plus the parameter counts.

    Raises:
        FileNotFoundError: When the checkpoint does not exist.
        ValueError: When the checkpoint stores no dataset config and none is given.
    """
    from sparse_cnf.lit import CNFSystem, RoundAnalysis
    from sparse_cnf.pruning import count_parameters

    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={cfg.ckpt_path!r} does not exist. Point it at a checkpoint of sparse-cnf-train, for "
            "example <run dir>/rounds/round_01.ckpt."
        )
    run_dir = Path(cfg.run_dir)
    configure_environment(cfg, run_dir)

    system = CNFSystem.load_from_checkpoint(ckpt_path, map_location="cpu")
    data_cfg = to_plain(cfg.dataset) if cfg.get("dataset") is not None else system.hparams.get("data")
    if not data_cfg:
        raise ValueError(
            f"{ckpt_path} stores no dataset config; choose the data with `+dataset=NAME`, where NAME "
            "is an option of conf/dataset (for example +dataset=gaussians)."
        )
    datamodule = build_datamodule(data_cfg, seed=int(data_cfg.get("seed", 0)))
    datamodule.setup("fit")

    analysis = RoundAnalysis.from_config(to_plain(cfg.analysis), run_dir=run_dir)
    round_index = cfg.get("round")
    if round_index is None:
        # rounds/round_XX.ckpt names its round; any other checkpoint counts as round 0.
        match = re.fullmatch(r"round_(\d+)", ckpt_path.stem)
        round_index = int(match.group(1)) if match else 0
    columns, paths = analysis.analyze(system.cnf, datamodule, round_index=int(round_index))
    counts = count_parameters(system.cnf)
    result = {
        "ckpt_path": str(ckpt_path),
        "nonzero_params": counts.nonzero,
        "total_params": counts.total,
        "prune_ratio": 1.0 - counts.nonzero / counts.total,
        **columns,
        "plots": [str(p) for p in paths],
    }

    out = run_dir / "analysis.json"
    clean = {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in result.items()}
    atomic_write_bytes(out, (json.dumps(clean, indent=2) + "\n").encode())
    log.info("analysis of %s: %s", ckpt_path, out)
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="analyze")
def _hydra_main(cfg: DictConfig) -> None:
    analyze(cfg)


def main() -> Any:
    """Console entry point of `sparse-cnf-analyze`."""
    quiet_known_warnings()
    return _hydra_main()


if __name__ == "__main__":
    main()
