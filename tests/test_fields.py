"""Tests of the vector fields: sizes, time input, concatsquash formula, masks and the factory."""

import pytest
import torch

from sparse_cnf.flows.fields import (
    ACTIVATIONS,
    ConcatSquashField,
    ConcatSquashLinear,
    MLPField,
    build_field,
)
from sparse_cnf.flows.layers import MaskedLinear


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mlp_parameter_count_with_time():
    field = MLPField(2, (64, 64, 64), "tanh", time_input=True)

    assert count(field) == (3 * 64 + 64) + 2 * (65 * 64 + 64) + (65 * 2 + 2)


def test_mlp_parameter_count_without_time():
    field = MLPField(2, (64, 64, 64), "tanh", time_input=False)

    assert count(field) == (2 * 64 + 64) + 2 * (64 * 64 + 64) + (64 * 2 + 2)


def test_mlp_time_is_column_zero_of_every_layer():
    torch.manual_seed(0)
    field = MLPField(3, (5, 4), "tanh", time_input=True).double()
    z = torch.randn(6, 3, dtype=torch.float64)

    assert field.time_columns == 1
    assert [layer.in_features for layer in field.layers] == [4, 6, 5]
    with torch.no_grad():
        for layer in field.layers:
            layer.weight[:, 0] = 0.0
    out_a = field(torch.tensor(0.1, dtype=torch.float64), z)
    out_b = field(torch.tensor(0.9, dtype=torch.float64), z)
    assert torch.equal(out_a, out_b)


def test_mlp_output_depends_on_time():
    torch.manual_seed(0)
    field = MLPField(2, (8,), "tanh", time_input=True).double()
    z = torch.randn(4, 2, dtype=torch.float64)

    out_a = field(torch.tensor(0.1, dtype=torch.float64), z)
    out_b = field(torch.tensor(0.9, dtype=torch.float64), z)

    assert not torch.allclose(out_a, out_b)


def test_mlp_without_time_ignores_time():
    field = MLPField(2, (8,), "tanh", time_input=False)
    z = torch.randn(4, 2)

    assert field.time_columns == 0
    assert torch.equal(field(torch.tensor(0.1), z), field(torch.tensor(0.9), z))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_runs(activation):
    field = MLPField(2, (8, 8), activation)
    out = field(torch.tensor(0.5), torch.randn(3, 2))

    assert out.shape == (3, 2)
    assert torch.isfinite(out).all()


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match="tanh, softplus, sigmoid, relu, elu, swish; got 'gelu'"):
        MLPField(2, (8,), "gelu")


def test_invalid_hidden_width_raises():
    with pytest.raises(ValueError, match="positive ints"):
        MLPField(2, (8, 0))


def test_mlp_prunable_layers_are_masked_and_ordered():
    field = MLPField(2, (8, 6))
    layers = field.prunable_layers()

    assert all(isinstance(layer, MaskedLinear) for layer in layers)
    assert [layer.out_features for layer in layers] == [8, 6, 2]


def test_masked_weight_acts_as_zero():
    torch.manual_seed(0)
    field = MLPField(2, (8,)).double()
    z = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    reference = MLPField(2, (8,)).double()
    reference.load_state_dict(field.state_dict())

    field.layers[0].weight_mask[:4] = False
    with torch.no_grad():
        reference.layers[0].weight[:4] = 0.0

    assert torch.allclose(field(t, z), reference(t, z))


def test_concatsquash_linear_formula():
    torch.manual_seed(0)
    layer = ConcatSquashLinear(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)

    gate = torch.sigmoid(layer.hyper_gate.weight[:, 0] * 0.7 + layer.hyper_gate.bias)
    shift = layer.hyper_bias.weight[:, 0] * 0.7
    expected = (x @ layer.linear.weight.T + layer.linear.bias) * gate + shift

    assert torch.allclose(layer(t, x), expected)
    assert count(layer) == 3 * 4 + 4 * 4
    assert layer.hyper_bias.bias is None


def test_concatsquash_field_layers():
    field = ConcatSquashField(6, (60, 60, 60))
    gate, bias = field.hyper_layers(1)

    assert field.time_columns == 0
    assert count(field) == 8664
    assert [layer.out_features for layer in field.prunable_layers()] == [60, 60, 60, 6]
    assert all(isinstance(layer, MaskedLinear) for layer in field.prunable_layers())
    assert gate is field.layers[1].hyper_gate
    assert bias is field.layers[1].hyper_bias


def test_build_field_kinds():
    assert isinstance(build_field("mlp", 2, [8, 8], "softplus"), MLPField)
    assert isinstance(build_field("concatsquash", 2, [8, 8], "tanh"), ConcatSquashField)


def test_build_field_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match="mlp, concatsquash; got 'resnet'"):
        build_field("resnet", 2, (8,), "tanh")


def test_build_field_concatsquash_needs_time():
    with pytest.raises(ValueError, match="time_input=False"):
        build_field("concatsquash", 2, (8,), "tanh", time_input=False)
