"""Pieces shared by the entry points: config folder, environment, data, loggers, resume."""

__all__ = [
    "CONFIG_DIR",
    "build_datamodule",
    "build_loggers",
    "compose",
    "configure_environment",
    "finish_wandb",
    "quiet_known_warnings",
    "resolve_ckpt_path",
    "to_plain",
]

import logging
import os
import secrets
import string
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The configs live at the top of the repository (an editable install keeps them there).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def to_plain(node: Any) -> Any:
    """Return a Hydra/OmegaConf node as plain, resolved Python containers (None stays None)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose a config from `conf/` with command-line style overrides, outside `@hydra.main`.

    For notebooks and tests: `train(compose(["dataset=spirals", "run_dir=/tmp/run"]))`. Without
    Hydra's runtime, `run_dir` must be given as an override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def _hydra_config() -> DictConfig | None:
    return HydraConfig.get() if HydraConfig.initialized() else None


def configure_environment(cfg: DictConfig, run_dir: Path) -> None:
    """Create the run folder and set the number of torch threads."""
    run_dir.mkdir(parents=True, exist_ok=True)

    threads = cfg.get("torch_threads", "auto")
    if threads == "auto":
        hydra_cfg = _hydra_config()
        launcher = str(hydra_cfg.launcher.get("_target_", "")) if hydra_cfg is not None else ""
        parallel = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN and "BasicLauncher" not in launcher
        if parallel:
            # Two jobs at two threads each ran about 16x slower than at one thread each on 2 cores.
            torch.set_num_threads(1)
    elif threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"torch_threads must be 'auto' or a positive integer; got {threads!r}.")
        torch.set_num_threads(threads)



def build_datamodule(dataset_cfg: DictConfig, seed: int) -> Any:
    """Build the data module from the `dataset` group (with `_target_` or plain keyword arguments)."""
    from sparse_cnf.data.datamodule import FlowDataModule

    if OmegaConf.is_config(dataset_cfg):
        missing = sorted(OmegaConf.missing_keys(dataset_cfg))
        if missing:
            hints = {"path": "a .npy or .csv file", "root": "the folder of the downloaded data"}
            key = missing[0]
            raise ValueError(
                f"dataset.{key} is required for dataset {dataset_cfg.get('name')!r}: pass "
                f"dataset.{key}=... ({hints.get(key, 'a value')})."
            )
    kwargs = to_plain(dataset_cfg)
    kwargs.setdefault("seed", seed)
    if "_target_" in kwargs:
        return hydra.utils.instantiate(kwargs)
    return FlowDataModule(**kwargs)


def _job_name(run_dir: Path) -> str:
    hydra_cfg = _hydra_config()
    if hydra_cfg is not None and hydra_cfg.job.override_dirname:
        return str(hydra_cfg.job.override_dirname)
    return run_dir.name if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN else f"job{hydra_cfg.job.num}"


def _sweep_group() -> str | None:
    hydra_cfg = _hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    # The last two parts of the sweep folder: DATE/TIME for the default multirun/DATE/TIME.
    return "/".join(Path(hydra_cfg.sweep.dir).parts[-2:])


def _wandb_run_id(run_dir: Path) -> str:
    """Return the wandb run id stored in the run folder, creating and storing one on first use."""
    path = run_dir / "wandb" / "run_id"
    if path.is_file():
        return path.read_text().strip()
    # Eight lowercase letters and digits, the form of the ids wandb generates itself.
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def _configure_wandb(run_dir: Path) -> None:
    """Keep wandb quiet (no prompt, no crash reports) and every file of it inside the run folder."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    for variable, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb/cache"), ("WANDB_CONFIG_DIR", "wandb/config")):
        os.environ[variable] = str(run_dir / sub) if sub else str(run_dir)
        Path(os.environ[variable]).mkdir(parents=True, exist_ok=True)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """Instantiate the `logger` group; wandb runs get a name and group from the job when unset."""
    loggers = []
    for key, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:
            continue
        kwargs: dict[str, Any] = {}
        target = str(logger_cfg.get("_target_", ""))
        if target.endswith("WandbLogger"):
            _configure_wandb(run_dir)
            if logger_cfg.get("name") is None:
                kwargs["name"] = _job_name(run_dir)
            if logger_cfg.get("group") is None:
                kwargs["group"] = _sweep_group()
            # Passed after instantiation: `config` is also instantiate's own first argument, and
            # the run config contains `_target_` keys that must stay plain values here.
            kwargs["config"] = to_plain(cfg)
            if logger_cfg.get("id") is None:
                # A resumed run logs into the wandb run its first attempt started.
                kwargs["id"] = _wandb_run_id(run_dir)
                kwargs["resume"] = "allow"
        log.debug("logger %s: %s", key, target)
        loggers.append(hydra.utils.instantiate(logger_cfg, _partial_=True)(**kwargs))
    return loggers


def finish_wandb(loggers: Sequence[Any], failed: bool) -> None:
    """Close this job's wandb run so that the next job of a sweep starts its own run.

    A job that raised is marked failed (exit code 1).
    """
    if not any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


def quiet_known_warnings() -> None:
    """Hide warnings that Lightning 2.6 raises from its own code on every run, which users cannot act on."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """Return the checkpoint to resume from: `ckpt_path`, else `last.ckpt` when `resume=auto`.

    Raises:
        ValueError: On an unknown `resume` mode.
        FileNotFoundError: When `ckpt_path` names a file that does not exist.
    """
    resume = cfg.get("resume", "auto")
    if resume not in ("auto", "never"):
        raise ValueError(f"resume must be 'auto' or 'never'; got {resume!r}.")
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"ckpt_path={cfg.ckpt_path!r} does not exist. Point it at a .ckpt file, for example "
                "<run dir>/checkpoints/last.ckpt, or drop it to start a new run."
            )
        return str(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume == "auto" and last.is_file():
        return str(last)
    return None
