import math

import pytest
import torch

from sparse_cnf.metrics import NLL, bits_per_dim


def test_nll_mean_over_batches():
    metric = NLL()
    first = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    second = torch.tensor([10.0], dtype=torch.float64)
    metric.update(first)
    metric.update(second)

    assert metric.compute().item() == pytest.approx(16.0 / 4)


def test_nll_reset_gives_nan():
    metric = NLL()
    metric.update(torch.ones(5))
    metric.reset()

    with pytest.warns(UserWarning, match="before the ``update``"):
        value = metric.compute()
    assert math.isnan(value.item())


def test_nll_merge_matches_union():
    # merge_state sums the states the same way DDP's reduction does.
    rank0, rank1 = NLL(), NLL()
    rank0.update(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    rank1.update(torch.tensor([6.0]))
    rank0.merge_state(rank1)

    assert rank0.compute().item() == pytest.approx(2.0)


def test_nll_state_is_float64():
    metric = NLL()
    metric.update(torch.tensor([1e8, 1.0], dtype=torch.float32))

    assert metric.nll_sum.dtype == torch.float64
    assert metric.count.item() == 2


def test_nll_rejects_batch_mean():
    with pytest.raises(ValueError, match="shape"):
        NLL().update(torch.tensor(1.0))


def test_nll_non_finite_propagates():
    metric = NLL()
    metric.update(torch.tensor([1.0, float("inf")]))

    assert math.isinf(metric.compute().item())


def test_bits_per_dim_plain():
    dim = 6

    assert bits_per_dim(dim * math.log(2.0), dim) == pytest.approx(1.0)


def test_bits_per_dim_pixel_offset():
    # A flow on pixels / 256 reports nll - dim * log(256) on the [0, 1) scale.
    dim = 784
    nll_unit_scale = dim * math.log(2.0) * 3.0 - dim * math.log(256.0)

    assert bits_per_dim(nll_unit_scale, dim, data_scale=256.0) == pytest.approx(3.0)


def test_bits_per_dim_tensor_shape():
    values = torch.full((4,), 2.0 * math.log(2.0), dtype=torch.float64)
    result = bits_per_dim(values, 2)

    assert result.shape == (4,)
    assert torch.allclose(result, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("dim", [0, -1, 2.0, True])
def test_bits_per_dim_bad_dim(dim):
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(1.0, dim)


@pytest.mark.parametrize("scale", [0.0, -256.0, math.inf])
def test_bits_per_dim_bad_scale(scale):
    with pytest.raises(ValueError, match="data_scale"):
        bits_per_dim(1.0, 2, data_scale=scale)
