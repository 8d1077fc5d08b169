"""Tests of field discovery: masked layers, chains, time columns, hyper-layers and removed neurons."""

import pytest
import torch
from _pruning_fields import SquashField, TimeMLP, TwoFields, sequential_field
from torch import nn

from sparse_cnf.flows.layers import MaskedLinear
from sparse_cnf.pruning import find_fields, prunable_layers, removed_neurons


def test_prunable_layers_masked_only():
    model = TwoFields()

    layers = prunable_layers(model)

    assert len(layers) == 6
    assert all(isinstance(layer, MaskedLinear) for layer in layers)


def test_prunable_layers_none():
    assert prunable_layers(nn.Linear(3, 3)) == []


def test_find_fields_sequential():
    model = sequential_field()

    (field,) = find_fields(model)

    assert field.module is model
    assert field.time_columns == 0
    assert [layer.out_features for layer in field.layers] == [16, 16, 3]


def test_find_fields_time_columns():
    (field,) = find_fields(TimeMLP())

    assert field.time_columns == 1


def test_find_fields_sibling_hyper_layers():
    model = SquashField()

    (field,) = find_fields(model)

    assert field.hyper_layers[0] == (model.layers[0].hyper_gate, model.layers[0].hyper_bias)


def test_find_fields_declared_hyper_layers():
    model = SquashField()
    model.hyper_layers = lambda index: (model.layers[index].hyper_gate,)

    (field,) = find_fields(model)

    assert field.hyper_layers[1] == (model.layers[1].hyper_gate,)


def test_find_fields_innermost():
    model = TwoFields()
    model.prunable_layers = lambda: prunable_layers(model)

    fields = find_fields(model)

    assert [field.module for field in fields] == [model.first, model.second]


def test_find_fields_plain_module_has_none():
    model = nn.ModuleDict({"a": MaskedLinear(2, 3), "b": MaskedLinear(5, 2)})

    assert find_fields(model) == []


def test_find_fields_broken_chain_message():
    model = TimeMLP()
    model.time_columns = 0

    with pytest.raises(ValueError, match=r"layer 1 should have 8 inputs .* but has 9"):
        find_fields(model)


def test_find_fields_rejects_unmasked_layer():
    model = TimeMLP()
    model.prunable_layers = lambda: [nn.Linear(3, 8)]

    with pytest.raises(TypeError, match="only masked layers"):
        find_fields(model)


def test_removed_neurons_needs_row_and_column():
    model = TimeMLP()
    first, second = model.layers[0], model.layers[1]
    first.weight_mask[2] = False
    second.weight_mask[:, 1 + 2] = False
    first.weight_mask[5] = False

    removed = removed_neurons(find_fields(model)[0])

    assert removed[0].tolist() == [False, False, True, False, False, False, False, False]
    assert not bool(removed[1].any())


def test_removed_neurons_time_column_is_not_a_neuron():
    model = TimeMLP()
    model.layers[1].weight_mask[:, 0] = False
    model.layers[0].weight_mask[0] = False

    removed = removed_neurons(find_fields(model)[0])

    assert not bool(removed[0].any())


def test_removed_neurons_conv_channels():
    from sparse_cnf.flows.layers import MaskedConv2d

    model = nn.Sequential(MaskedConv2d(1, 4, 3), nn.Tanh(), MaskedConv2d(4, 1, 3))
    model[0].weight_mask[1] = False
    model[2].weight_mask[:, 1] = False

    (removed,) = removed_neurons(find_fields(model)[0])

    assert removed.tolist() == [False, True, False, False]
    assert torch.equal(model[0].weight_mask[0], torch.ones(1, 3, 3, dtype=torch.bool))
