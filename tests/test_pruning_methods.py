"""Tests of global unstructured and structured pruning: counts, which entries go, errors, state dicts."""

import warnings

import pytest
import torch
from _pruning_fields import SquashField, TimeMLP, TwoFields, sequential_field
from torch import nn

from sparse_cnf.pruning import (
    count_parameters,
    find_fields,
    prunable_layers,
    prune,
    prune_structured,
    prune_unstructured,
    removed_neurons,
)


def _target(ratio: float, dense_total: int) -> int:
    return round((1.0 - ratio) * dense_total)


def test_unstructured_exact_count():
    model = TwoFields()
    total = count_parameters(model).total

    counts = prune_unstructured(model, 0.37)

    assert counts.nonzero == _target(0.37, total)


def test_unstructured_pruned_weights_zero():
    model = TwoFields()

    prune_unstructured(model, 0.5)
    dropped = torch.cat([layer.weight.detach()[~layer.weight_mask] for layer in prunable_layers(model)])

    assert dropped.numel() > 0
    assert bool((dropped == 0.0).all())


def test_unstructured_smallest_weights_go():
    torch.manual_seed(0)
    model = TwoFields()
    layers = prunable_layers(model)
    before = [layer.weight.detach().abs().clone() for layer in layers]

    prune_unstructured(model, 0.6)
    pruned = torch.cat([b[~layer.weight_mask] for b, layer in zip(before, layers)])
    kept = torch.cat([b[layer.weight_mask] for b, layer in zip(before, layers)])

    assert float(pruned.max()) <= float(kept.min())


def test_unstructured_ranks_across_layers():
    model = sequential_field((3, 16, 16, 3))
    with torch.no_grad():
        model[2].weight.fill_(10.0)

    prune_unstructured(model, 0.15)

    assert bool(model[2].weight_mask.all())
    assert not bool(model[0].weight_mask.all())


def test_unstructured_biases_untouched():
    model = TimeMLP(hidden=(32, 32))
    biases = [layer.bias.clone() for layer in model.layers]

    prune_unstructured(model, 0.5)

    assert all(torch.equal(layer.bias, bias) for layer, bias in zip(model.layers, biases))


def test_unstructured_keeps_earlier_masks():
    model = TimeMLP()
    model.layers[1].weight_mask[0, 0] = False
    with torch.no_grad():
        model.layers[1].weight[0, 0] = 100.0

    prune_unstructured(model, 0.3)

    assert not bool(model.layers[1].weight_mask[0, 0])


def test_unstructured_dense_total():
    model = TimeMLP(hidden=(32, 32))
    dense_total = count_parameters(model).total + 500

    counts = prune_unstructured(model, 0.5, dense_total=dense_total)

    assert counts.nonzero == _target(0.5, dense_total)


def test_unstructured_unreachable_message():
    model = SquashField()
    masks = [layer.weight_mask.clone() for layer in prunable_layers(model)]

    with pytest.raises(ValueError, match=r"`ratio`=0.99 is unreachable .*max ratio 0\.\d+.*smaller ratio"):
        prune_unstructured(model, 0.99)

    assert all(torch.equal(layer.weight_mask, m) for layer, m in zip(prunable_layers(model), masks))


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan"), True, "0.5"])
def test_prune_invalid_ratio(ratio):
    with pytest.raises(ValueError, match=r"`ratio` must .* got"):
        prune_unstructured(TimeMLP(), ratio)


def test_prune_ratio_below_current():
    model = TimeMLP(hidden=(32, 32))
    prune_unstructured(model, 0.6)

    with pytest.raises(ValueError, match=r"`ratio`=0.3 is below the model's current prune ratio 0\.\d{4}; .*must increase"):
        prune_unstructured(model, 0.3)


def test_prune_same_ratio_twice_no_change():
    model = TimeMLP(hidden=(32, 32))
    prune_unstructured(model, 0.6)
    masks = [layer.weight_mask.clone() for layer in model.layers]

    prune_unstructured(model, 0.6)

    assert all(torch.equal(layer.weight_mask, m) for layer, m in zip(model.layers, masks))


def test_prune_unknown_method():
    with pytest.raises(ValueError, match=r"`method` must be one of unstructured, structured; got 'random'"):
        prune(TimeMLP(), "random", 0.5)


def test_prune_dispatch_structured():
    model = TimeMLP(hidden=(32, 32))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structured pruning reached", category=UserWarning)
        prune(model, "structured", 0.5)

    assert bool(removed_neurons(find_fields(model)[0])[0].any())


def _prune_structured_quietly(model: nn.Module, ratio: float) -> None:
    """Prune structured and ignore the warning about discrete ratios, which small fields always get."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structured pruning reached", category=UserWarning)
        prune_structured(model, ratio)


def _row_column_consistent(field) -> bool:
    """Check that every row-dead neuron has a dead next-layer column and the reverse."""
    for index, removed in zip(field.hidden_indices(), removed_neurons(field)):
        rows = ~field.layers[index].weight_mask.any(dim=1)
        columns = ~field.layers[index + 1].weight_mask.any(dim=0)[field.time_columns :]
        if not (torch.equal(rows, removed) and torch.equal(columns, removed)):
            return False
    return True


def test_structured_whole_neurons():
    torch.manual_seed(0)
    model = TimeMLP(hidden=(16, 16))

    _prune_structured_quietly(model, 0.5)
    (field,) = find_fields(model)
    removed = removed_neurons(field)

    assert int(removed[0].sum()) == int(removed[1].sum())
    assert int(removed[0].sum()) > 0
    assert _row_column_consistent(field)


def test_structured_mask_is_rectangle():
    torch.manual_seed(0)
    model = TimeMLP(hidden=(16, 16))

    _prune_structured_quietly(model, 0.5)
    mask = model.layers[1].weight_mask
    rows, columns = mask.any(dim=1), mask.any(dim=0)

    assert torch.equal(mask, rows[:, None] & columns[None, :])


def test_structured_time_column_kept():
    model = TimeMLP(hidden=(16, 16))

    _prune_structured_quietly(model, 0.6)

    assert bool(model.layers[1].weight_mask[model.layers[1].weight_mask.any(dim=1), 0].all())
    assert bool(model.layers[2].weight_mask[:, 0].all())


def test_structured_output_layer_whole():
    model = TimeMLP(hidden=(16, 16))

    _prune_structured_quietly(model, 0.6)

    assert bool(model.layers[2].weight_mask.any(dim=1).all())


def test_structured_lowest_l1_rows_go():
    model = TimeMLP(hidden=(16, 16))
    with torch.no_grad():
        model.layers[0].weight[:4].mul_(1e-3)

    _prune_structured_quietly(model, 0.2)
    removed = removed_neurons(find_fields(model)[0])[0]

    assert bool(removed[:4].any())
    assert not bool(removed[4:].any())


def test_structured_hyper_outputs_zero():
    torch.manual_seed(0)
    model = SquashField(hidden=(16, 16))

    _prune_structured_quietly(model, 0.5)
    removed = removed_neurons(find_fields(model)[0])[0]
    layer = model.layers[0]

    assert bool((layer.linear.bias[removed] == 0).all())
    assert bool((layer.hyper_gate.weight[removed] == 0).all())
    assert bool((layer.hyper_gate.bias[removed] == 0).all())
    assert bool((layer.hyper_bias.weight[removed] == 0).all())
    assert bool((layer.hyper_gate.bias[~removed] != 0).all())


def test_structured_same_fraction_across_fields():
    model = TwoFields(hidden=(16, 16))

    _prune_structured_quietly(model, 0.4)
    cuts = [int(r.sum()) for field in find_fields(model) for r in removed_neurons(field)]

    assert len(set(cuts)) == 1


def test_structured_meets_tolerance_when_possible():
    torch.manual_seed(0)
    model = TimeMLP(hidden=(64, 64, 64))
    total = count_parameters(model).total

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = prune_structured(model, 0.75)

    assert abs((1 - counts.nonzero / total) - 0.75) <= 0.005 * 0.75


def test_structured_discrete_ratio_warns():
    model = TimeMLP(hidden=(4, 4))

    with pytest.warns(UserWarning, match=r"structured pruning reached prune ratio 0\.\d+ .* not the requested 0.3"):
        prune_structured(model, 0.3)


def test_structured_unreachable_message():
    model = TimeMLP(hidden=(4, 4))

    with pytest.raises(ValueError, match=r"`ratio`=0.95 is unreachable by structured pruning.*max ratio"):
        prune_structured(model, 0.95)


def test_structured_needs_field():
    model = nn.ModuleDict({"a": nn.Linear(2, 2)})

    with pytest.raises(ValueError, match=r"needs a field with at least one hidden layer.*'unstructured'"):
        prune_structured(model, 0.5)


def test_structured_rounds_keep_removed():
    torch.manual_seed(0)
    model = TimeMLP(hidden=(32, 32))
    _prune_structured_quietly(model, 0.3)
    first = removed_neurons(find_fields(model)[0])

    _prune_structured_quietly(model, 0.6)
    second = removed_neurons(find_fields(model)[0])

    assert all(bool(b[a].all()) for a, b in zip(first, second))


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_state_dict_keys_and_strict_load(method):
    model = TwoFields(hidden=(16, 16))
    keys = list(model.state_dict())

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structured pruning reached", category=UserWarning)
        prune(model, method, 0.5)
    fresh = TwoFields(hidden=(16, 16))
    fresh.load_state_dict(model.state_dict(), strict=True)

    assert list(model.state_dict()) == keys
    assert count_parameters(fresh) == count_parameters(model)


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_pruning_keeps_parameter_order(method):
    model = TwoFields(hidden=(16, 16))
    params = list(model.parameters())

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structured pruning reached", category=UserWarning)
        prune(model, method, 0.5)

    assert all(a is b for a, b in zip(model.parameters(), params))
