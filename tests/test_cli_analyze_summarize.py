"""Tests of `sparse-cnf-analyze` on a saved checkpoint and `sparse-cnf-summarize` on a sweep folder."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sparse_cnf.cli.analyze import analyze
from sparse_cnf.cli.common import compose
from sparse_cnf.cli.summarize import collect_rows, main, mode_table, nll_table, summarize
from sparse_cnf.cli.train import train

TINY = [
    "dataset.n_train=256", "dataset.n_val=128", "dataset.n_test=128", "dataset.batch_size=64",
    "model.hidden=[16,16]", "solver.rtol=1e-4", "solver.atol=1e-4", "logger=none",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "analysis.modes.num_samples=300", "analysis.modes.num_sets=2", "analysis.plots.enabled=false",
    "epochs=1", "prune.epochs_per_round=1", "prune.schedule.ratios=[0.5]",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two finished jobs (seeds 0 and 1) laid out as a multirun folder, with their configs."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in (0, 1):
        job = root / str(seed)
        cfg = compose([*TINY, f"seed={seed}", f"run_dir={job}"])
        train(cfg)
        (job / ".hydra").mkdir()
        OmegaConf.save(cfg, job / ".hydra" / "config.yaml", resolve=True)
        OmegaConf.save(OmegaConf.create([f"seed={seed}", "epochs=1"]), job / ".hydra" / "overrides.yaml")
    return root


def _analyze_cfg(ckpt: Path, out: Path, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sparse_cnf.cli.common import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("analyze", overrides=[f"ckpt_path={ckpt}", f"run_dir={out}", *overrides])


def test_analyze_matches_round_columns(sweep, tmp_path):
    ckpt = sweep / "0" / "rounds" / "round_01.ckpt"
    cfg = _analyze_cfg(ckpt, tmp_path, "analysis.modes.num_samples=300", "analysis.modes.num_sets=2",
                       "analysis.plots.enabled=true", "analysis.plots.grid_size=10", "analysis.plots.num_samples=50")
    result = analyze(cfg)
    row = json.loads((sweep / "0" / "results.json").read_text())[1]

    assert result["good_2std"] == pytest.approx(row["good_2std"])
    assert result["nonzero_params"] == row["nonzero_params"]
    assert json.loads((tmp_path / "analysis.json").read_text())["good_3std"] == pytest.approx(row["good_3std"])
    assert len(result["plots"]) == 3
    assert all("round_01" in p for p in result["plots"])
    assert all(Path(p).stat().st_size > 0 for p in result["plots"])


def test_analyze_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        analyze(_analyze_cfg(tmp_path / "nothing.ckpt", tmp_path))


def test_collect_rows_tags_jobs(sweep):
    rows = collect_rows(sweep)

    assert len(rows) == 4
    assert {row["seed"] for row in rows} == {0, 1}
    assert {row["dataset"] for row in rows} == {"gaussians"}
    assert {row["method"] for row in rows} == {"unstructured"}


def test_mode_table_averages_seeds(sweep):
    rows = collect_rows(sweep)
    table = mode_table(rows)
    dense = [r for r in rows if r["round"] == 0]

    assert [entry["prune_ratio"] for entry in table] == [0.0, 0.5]
    assert table[0]["seeds"] == 2
    assert table[0]["good_2std"] == pytest.approx(sum(r["good_2std"] for r in dense) / 2)


def test_nll_table_dense_and_pruned(sweep):
    (entry,) = nll_table(collect_rows(sweep))

    assert entry["dense_params"] > entry["pruned_params"]
    assert entry["pruned_ratio"] == pytest.approx(0.5, rel=0.005)
    assert entry["seeds"] == 2


def test_summarize_writes_tables_and_plots(sweep, tmp_path):
    summary = summarize(sweep, tmp_path / "summary")

    text = summary.read_text()
    assert "Good-sample share" in text
    assert (tmp_path / "summary" / "modes.csv").is_file()
    assert (tmp_path / "summary" / "nll.csv").is_file()
    assert list((tmp_path / "summary").glob("*.png"))


def test_summarize_cli_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "absent")])

    assert info.value.code == 2
    assert "absent" in capsys.readouterr().err


def test_jobs_with_other_settings_stay_apart(sweep, tmp_path):
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    OmegaConf.save(OmegaConf.create(["seed=1", "epochs=1", "model.hidden=[8]"]), copy / "1" / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create(["seed=0", "epochs=1", "model.hidden=[16,16]"]), copy / "0" / ".hydra" / "overrides.yaml")
    table = nll_table(collect_rows(copy))

    assert sorted(entry["setting"] for entry in table) == ["model.hidden=[16,16]", "model.hidden=[8]"]
    assert [entry["seeds"] for entry in table] == [1, 1]
