"""Every option of every config group composes, and the objects it describes can be built."""

from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sparse_cnf.cli.common import CONFIG_DIR, build_loggers, compose, to_plain

GROUPS = ["model", "solver", "optimizer", "scheduler", "prune", "trainer", "logger", "callbacks", "analysis", "dataset"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _cases() -> list[tuple[str, str]]:
    return [(group, option) for group in GROUPS for option in _options(group)]


def test_every_group_has_default():
    missing = [group for group in GROUPS if "default" not in _options(group)]

    assert missing == []


def _commented(line: str) -> bool:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or stripped.startswith("- ") or stripped in ("{}", "null", "defaults:"):
        return True
    return "#" in line or stripped.endswith(":")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_key_commented(path):
    uncommented = [line for line in path.read_text().splitlines() if not _commented(line)]

    assert uncommented == []


@pytest.mark.parametrize(("group", "option"), _cases())
def test_option_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}", f"run_dir={tmp_path}"])

    assert OmegaConf.to_container(cfg, resolve=True) is not None


@pytest.mark.parametrize("option", _options("model"))
def test_model_builds(option):
    from sparse_cnf.flows import build_cnf

    cfg = compose([f"model={option}", "run_dir=."])
    cnf = build_cnf(2, **to_plain(cfg.model), solver=to_plain(cfg.solver))

    assert sum(p.numel() for p in cnf.parameters()) > 0


@pytest.mark.parametrize("option", _options("solver"))
def test_solver_validates(option):
    from sparse_cnf.flows import SolverOptions

    cfg = compose([f"solver={option}", "run_dir=."])
    options = SolverOptions.from_mapping(to_plain(cfg.solver))

    assert options.method == cfg.solver.method


@pytest.mark.parametrize("optimizer", _options("optimizer"))
@pytest.mark.parametrize("scheduler", _options("scheduler"))
def test_optimizer_and_scheduler_build(optimizer, scheduler):
    cfg = compose([f"optimizer={optimizer}", f"scheduler={scheduler}", "run_dir=."])
    params = [torch.nn.Parameter(torch.zeros(3))]
    built = hydra.utils.instantiate(cfg.optimizer)(params)

    assert isinstance(built, torch.optim.Optimizer)
    if cfg.scheduler:
        scheduler_cfg = to_plain(cfg.scheduler)
        if scheduler_cfg.get("T_max", 0) is None:
            scheduler_cfg["T_max"] = 5
        assert hydra.utils.instantiate(scheduler_cfg)(built) is not None


@pytest.mark.parametrize("option", _options("prune"))
def test_prune_schedule_builds(option):
    from sparse_cnf.pruning import PruneSchedule

    cfg = compose([f"prune={option}", "run_dir=."])
    schedule = PruneSchedule.from_config(to_plain(cfg.prune))

    assert all(0.0 < r < 1.0 for r in schedule.ratios)


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_builds(option, tmp_path):
    cfg = compose([f"trainer={option}", f"run_dir={tmp_path}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("trainer=gpu needs a CUDA device; none is available here")
    trainer = hydra.utils.instantiate(cfg.trainer, max_epochs=1, logger=False, default_root_dir=str(tmp_path))

    assert trainer.max_epochs == 1


@pytest.mark.parametrize("option", _options("logger"))
def test_logger_builds(option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose([f"logger={option}", f"run_dir={tmp_path}"])
    loggers = build_loggers(cfg, tmp_path)

    assert len(loggers) == (0 if option == "none" else 1)
    from sparse_cnf.cli.common import finish_wandb

    finish_wandb(loggers, failed=False)


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callbacks_build(option, tmp_path):
    cfg = compose([f"callbacks={option}", f"run_dir={tmp_path}"])
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values()]

    assert len(callbacks) == len(cfg.callbacks or {})


@pytest.mark.parametrize("option", _options("analysis"))
def test_analysis_builds(option, tmp_path):
    from sparse_cnf.lit import RoundAnalysis

    cfg = compose([f"analysis={option}", f"run_dir={tmp_path}"])

    assert RoundAnalysis.from_config(to_plain(cfg.analysis), run_dir=tmp_path) is not None


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_launcher_composes(launcher, tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"hydra/launcher={launcher}", f"run_dir={tmp_path}"], return_hydra_config=True)

    assert "Launcher" in cfg.hydra.launcher._target_


@pytest.mark.parametrize(("override", "listed"), [
    ("dataset=nosuchset", "gaussians"),
    ("logger=nosuchlogger", "wandb"),
    ("solver=nosuchsolver", "adjoint"),
])
def test_unknown_group_option_lists_choices(override, listed):
    with pytest.raises(ConfigCompositionException) as info:
        compose([override, "run_dir=."])

    message = str(info.value) + str(info.value.__cause__)
    assert override.split("=")[1] in message
    assert listed in message
