"""Tests of parameter counts and the prune ratio, against counts worked out by hand."""

import pytest
from _pruning_fields import SquashField, TimeMLP, TwoFields

from sparse_cnf.pruning import apply_masks, count_parameters, prune_ratio

# TimeMLP(2, (8, 8)): layers (2+1)->8, (8+1)->8, (8+1)->2 with biases.
MLP_TOTAL = (3 * 8 + 8) + (9 * 8 + 8) + (9 * 2 + 2)
MLP_WEIGHTS = 3 * 8 + 9 * 8 + 9 * 2
# SquashField(2, (8, 8)): in * out + 4 * out per layer.
SQUASH_TOTAL = (2 * 8 + 32) + (8 * 8 + 32) + (8 * 2 + 8)


def test_counts_dense_mlp():
    counts = count_parameters(TimeMLP())

    assert counts.total == MLP_TOTAL
    assert counts.prunable == MLP_WEIGHTS
    assert counts.nonzero == MLP_TOTAL


def test_counts_dense_squash():
    counts = count_parameters(SquashField())

    assert counts.total == SQUASH_TOTAL
    assert counts.prunable == 2 * 8 + 8 * 8 + 8 * 2


def test_counts_scalar_parameter_included():
    assert count_parameters(TwoFields()).total == MLP_TOTAL + SQUASH_TOTAL + 1


def test_counts_masked_entries():
    model = TimeMLP()
    model.layers[0].weight_mask[0, :2] = False
    model.layers[2].weight_mask[1, 4] = False

    counts = count_parameters(model)

    assert counts.nonzero == MLP_TOTAL - 3
    assert counts.pruned == 3


def test_counts_ignore_values():
    model = TimeMLP()
    model.layers[1].weight.data.zero_()

    assert count_parameters(model).nonzero == MLP_TOTAL


def test_counts_removed_neuron_bias():
    model = TimeMLP()
    model.layers[0].weight_mask[3] = False
    model.layers[1].weight_mask[:, 1 + 3] = False

    counts = count_parameters(model)

    assert counts.nonzero == MLP_TOTAL - 3 - 8 - 1


def test_counts_removed_neuron_hyper_outputs():
    model = SquashField()
    model.layers[1].linear.weight_mask[5] = False
    model.layers[2].linear.weight_mask[:, 5] = False
    apply_masks(model)

    counts = count_parameters(model)

    # Row of 8, column of 2, then bias, gate weight, gate bias and shift weight of the neuron.
    assert counts.nonzero == SQUASH_TOTAL - 8 - 2 - 4


def test_prune_ratio_default_total():
    model = TimeMLP()
    model.layers[1].weight_mask[:4] = False

    assert prune_ratio(model) == pytest.approx(36 / MLP_TOTAL, abs=1e-12)


def test_prune_ratio_dense_total():
    assert prune_ratio(TimeMLP(), dense_total=2 * MLP_TOTAL) == pytest.approx(0.5, abs=1e-12)


def test_prune_ratio_dense_total_too_small():
    with pytest.raises(ValueError, match=r"`dense_total`=10 is smaller .*count_parameters\(dense_model\)"):
        prune_ratio(TimeMLP(), dense_total=10)


def test_prune_ratio_dense_total_type():
    with pytest.raises(ValueError, match=r"positive int .* got 1.5"):
        prune_ratio(TimeMLP(), dense_total=1.5)
