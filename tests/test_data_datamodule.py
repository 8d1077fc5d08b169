"""Tests for FlowDataModule: splits, normalization, mode statistics, batch order and configs."""

import inspect
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sparse_cnf.data.datamodule import EpochSampler, FlowDataModule
from sparse_cnf.data.images import MNIST_FILES, write_idx

REPO = Path(__file__).resolve().parents[1]
MINIBOONE_VAL = REPO.parent / "shared" / "data" / "miniboone" / "val.npy"
CONFIGS = sorted((REPO / "conf" / "dataset").glob("*.yaml"))


def _batches(loader) -> list[torch.Tensor]:
    return [batch.clone() for batch in loader]


def test_toy_split_sizes_and_info():
    dm = FlowDataModule("gaussians", n_train=600, n_val=100, n_test=50, seed=1)
    dm.setup("fit")

    assert dm.dim == 2
    assert {split: len(x) for split, x in dm.splits.items()} == {"train": 600, "val": 100, "test": 50}
    assert dm.info["n_train"] == 600
    assert dm.info["num_modes"] == 6
    assert len(dm.info["fingerprint"]) == 64


def test_toy_fingerprint_depends_on_seed():
    first = FlowDataModule("moons", n_train=200, n_val=20, n_test=20, seed=1)
    same = FlowDataModule("moons", n_train=200, n_val=20, n_test=20, seed=1)
    other = FlowDataModule("moons", n_train=200, n_val=20, n_test=20, seed=2)

    assert first.info["fingerprint"] == same.info["fingerprint"]
    assert first.info["fingerprint"] != other.info["fingerprint"]


def test_toy_train_points_independent_of_val_size():
    small = FlowDataModule("rings", n_train=300, n_val=10, n_test=10, seed=0, normalize=False)
    large = FlowDataModule("rings", n_train=300, n_val=90, n_test=10, seed=0, normalize=False)
    small.setup()
    large.setup()

    assert torch.equal(small.splits["train"], large.splits["train"])


def test_toy_scalar_normalization():
    dm = FlowDataModule("gaussians", n_train=20_000, n_val=10, n_test=10, seed=0, dtype="float64")
    raw = FlowDataModule("gaussians", n_train=20_000, n_val=10, n_test=10, seed=0, dtype="float64", normalize=False)
    dm.setup()
    raw.setup()
    scale = dm.info["normalization_std"]

    assert float(dm.splits["train"].mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(dm.splits["train"].std()) == pytest.approx(1.0, abs=1e-12)
    # One scalar shift and scale for both coordinates keeps the shape.
    expected = (raw.splits["train"] - dm.info["normalization_mean"]) / scale
    torch.testing.assert_close(dm.splits["train"], expected)


def test_toy_mode_stats_after_normalization():
    dm = FlowDataModule("gaussians", n_train=30_000, n_val=10, n_test=10, seed=0, dtype="float64")
    scale = dm.info["normalization_std"]
    stds = dm.mode_covs.diagonal(dim1=1, dim2=2).sqrt()

    torch.testing.assert_close(stds, torch.full((6, 2), 0.5 / scale, dtype=torch.float64), atol=0.02 / scale, rtol=0)
    train, labels = dm.splits["train"], dm.labels["train"]
    torch.testing.assert_close(dm.mode_means[2], train[labels == 2].mean(dim=0))


def test_toy_without_modes():
    dm = FlowDataModule("swissroll", n_train=100, n_val=10, n_test=10)

    assert dm.mode_means is None
    assert dm.mode_covs is None


def test_setup_is_idempotent():
    dm = FlowDataModule("pinwheel", n_train=100, n_val=10, n_test=10)
    dm.setup("fit")
    train = dm.splits["train"]
    dm.setup("test")
    dm.setup("fit")

    assert dm.splits["train"] is train


def test_train_order_depends_only_on_seed_and_epoch():
    kwargs = dict(name="8gaussians", n_train=100, n_val=10, n_test=10, seed=5, batch_size=16)
    run = FlowDataModule(**kwargs)
    loader = run.train_dataloader()
    loader.sampler.set_epoch(0)
    _batches(loader)
    loader.sampler.set_epoch(1)
    epoch_one = _batches(loader)

    # A resumed run: a new module and loader that start directly at epoch 1.
    resumed = FlowDataModule(**kwargs).train_dataloader()
    resumed.sampler.set_epoch(1)

    assert all(torch.equal(a, b) for a, b in zip(epoch_one, _batches(resumed), strict=True))
    loader.sampler.set_epoch(2)
    assert not torch.equal(torch.cat(epoch_one), torch.cat(_batches(loader)))


def test_epoch_sampler_is_a_permutation():
    sampler = EpochSampler(50, seed=3)
    sampler.set_epoch(4)

    assert sorted(sampler) == list(range(50))
    assert len(sampler) == 50


class _Recorder(pl.LightningModule):
    """Records the training batches; a dummy parameter gives the optimizer something to step."""

    def __init__(self):
        super().__init__()

        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())

        return (self.weight * batch.sum()).abs()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trainer_sets_sampler_epoch(tmp_path):
    dm = FlowDataModule("gaussians", n_train=48, n_val=8, n_test=8, seed=2, batch_size=16)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path, accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    order = np.random.default_rng([2, 1]).permutation(48)

    torch.testing.assert_close(torch.cat(model.seen[3:]), dm.splits["train"][order])


def test_table_from_csv(tmp_path):
    path = tmp_path / "t.csv"
    values = np.random.default_rng(0).normal(loc=3.0, scale=2.0, size=(50, 3))
    np.savetxt(path, values, delimiter=",", header="a,b,c", comments="")
    dm = FlowDataModule("table", path=str(path), val_fraction=0.2, test_fraction=0.1, seed=0, dtype="float64")

    assert dm.dim == 3
    assert (dm.info["n_train"], dm.info["n_val"], dm.info["n_test"]) == (35, 10, 5)
    torch.testing.assert_close(dm.splits["train"].mean(dim=0), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(dm.splits["train"].std(dim=0, unbiased=False), torch.ones(3, dtype=torch.float64))


def test_table_d2_through_datamodule(tmp_path):
    path = tmp_path / "t.npy"
    values = np.random.default_rng(0).normal(size=(60, 4))
    values[:, 1] = 2.5
    values[[3, 10, 44], [0, 2, 3]] = [np.nan, np.inf, -np.inf]
    np.save(path, values)
    dm = FlowDataModule("table", path=str(path), constant="drop")

    with pytest.warns(UserWarning) as record:
        dm.setup()

    assert any("3 of 60 rows" in str(warning.message) for warning in record)
    assert any("columns 1 are constant" in str(warning.message) for warning in record)
    assert dm.dim == 3
    assert all(bool(torch.isfinite(x).all()) for x in dm.splits.values())


def test_table_wrong_dim_one_error(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.random.default_rng(0).normal(size=(20, 5)))
    dm = FlowDataModule("table", path=str(path), expected_dim=43)

    with pytest.raises(ValueError, match="has 5 columns but dataset.expected_dim is 43"):
        dm.setup()


@pytest.mark.skipif(not MINIBOONE_VAL.is_file(), reason=f"real MINIBOONE rows not found at {MINIBOONE_VAL}")
def test_table_real_miniboone_rows():
    dm = FlowDataModule("table", path=str(MINIBOONE_VAL), expected_dim=43, seed=0, batch_size=512)
    batch = next(iter(dm.train_dataloader()))

    assert dm.dim == 43
    assert (dm.info["n_train"], dm.info["n_val"], dm.info["n_test"]) == (2628, 328, 328)
    assert batch.shape == (512, 43)
    assert batch.dtype == torch.float32
    assert all(bool(torch.isfinite(x).all()) for x in dm.splits.values())


def test_mnist_datamodule(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / MNIST_FILES["train_images"], rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / MNIST_FILES["train_labels"], rng.integers(0, 10, size=20, dtype=np.uint8))
    write_idx(tmp_path / MNIST_FILES["test_images"], rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / MNIST_FILES["test_labels"], rng.integers(0, 10, size=6, dtype=np.uint8))
    dm = FlowDataModule("mnist", root=str(tmp_path), val_fraction=0.25, batch_size=5)

    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = torch.cat(_batches(loader))
    loader.sampler.set_epoch(1)
    second = torch.cat(_batches(loader))
    test = torch.cat(_batches(dm.test_dataloader()))

    assert dm.dim == 784
    assert (dm.info["n_train"], dm.info["n_val"], dm.info["n_test"]) == (15, 5, 6)
    assert first.shape == (15, 1, 28, 28)
    assert float(first.min()) >= 0.0
    assert float(first.max()) < 1.0
    assert not torch.equal(first.sort(dim=0).values, second.sort(dim=0).values)
    assert torch.equal(test, torch.cat(_batches(dm.test_dataloader())))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="gausians"), "dataset.name must be one of"),
        (dict(name="table"), "dataset.path is required"),
        (dict(name="power"), "dataset.root is required"),
        (dict(batch_size=0), "dataset.batch_size must be an integer >= 1"),
        (dict(seed=-1), "dataset.seed must be an integer >= 0"),
        (dict(dtype="float16"), "dataset.dtype must be one of float32, float64"),
        (dict(val_fraction=0.6, test_fraction=0.5), "must be below 1"),
    ],
)
def test_bad_options_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowDataModule(**kwargs)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_dataset_config_keys_match_constructor(config):
    cfg = OmegaConf.load(config)
    parameters = set(inspect.signature(FlowDataModule).parameters)

    assert cfg["_target_"] == "sparse_cnf.data.datamodule.FlowDataModule"
    assert set(cfg.keys()) - {"_target_"} <= parameters


def test_default_config_instantiates_with_run_seed():
    # The dataset group sits under `dataset` in a composed run config, next to the run's seed.
    cfg = OmegaConf.create({"seed": 3, "dataset": OmegaConf.load(REPO / "conf" / "dataset" / "default.yaml")})
    cfg.dataset.n_train, cfg.dataset.n_val, cfg.dataset.n_test = 200, 20, 20
    dm = instantiate(cfg.dataset)

    assert dm.hparams.name == "gaussians"
    assert dm.hparams.seed == 3
    assert dm.mode_means.shape == (6, 2)
