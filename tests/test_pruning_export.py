"""Tests of exporting a structured-pruned model to a smaller dense model with the same outputs."""

import warnings

import pytest
import torch
from _pruning_fields import SquashField, TimeMLP, TwoFields, sequential_field
from torch import nn

from sparse_cnf.flows import build_cnf
from sparse_cnf.flows.layers import MaskedConv2d
from sparse_cnf.pruning import count_parameters, export_structured, prune_structured, prune_unstructured


def _prune(model: nn.Module, ratio: float) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="structured pruning reached", category=UserWarning)
        prune_structured(model, ratio)


def _inputs(dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.tensor(0.7, dtype=torch.float64), torch.randn(64, dim, generator=generator, dtype=torch.float64)


def _size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make", [TimeMLP, SquashField, TwoFields], ids=["time_mlp", "squash", "two_fields"])
def test_export_same_outputs(make):
    torch.manual_seed(0)
    model = make(hidden=(32, 24)).double()
    _prune(model, 0.5)
    t, z = _inputs()

    exported = export_structured(model)

    assert torch.allclose(exported(t, z), model(t, z), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("make", [TimeMLP, SquashField, TwoFields], ids=["time_mlp", "squash", "two_fields"])
def test_export_size_equals_nonzero(make):
    torch.manual_seed(0)
    model = make(hidden=(32, 24)).double()
    _prune(model, 0.6)

    exported = export_structured(model)

    assert _size(exported) == count_parameters(model).nonzero
    assert _size(exported) < count_parameters(model).total


def test_export_layer_shapes():
    torch.manual_seed(0)
    model = TimeMLP(hidden=(16, 16))
    _prune(model, 0.5)

    exported = export_structured(model)
    kept = exported.layers[0].out_features

    assert kept < 16
    assert exported.layers[1].in_features == kept + 1
    assert exported.layers[1].weight.shape == (exported.layers[1].out_features, kept + 1)
    assert exported.layers[2].out_features == 2


def test_export_sequential_field():
    torch.manual_seed(0)
    model = sequential_field((3, 16, 16, 3)).double()
    _prune(model, 0.5)
    z = torch.randn(8, 3, dtype=torch.float64)

    exported = export_structured(model)

    assert torch.allclose(exported(z), model(z), rtol=0.0, atol=1e-6)


def test_export_conv_field():
    torch.manual_seed(0)
    model = nn.Sequential(MaskedConv2d(2, 8, 3, padding=1), nn.Tanh(), MaskedConv2d(8, 2, 3, padding=1)).double()
    _prune(model, 0.5)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)

    exported = export_structured(model)

    assert exported[0].out_channels < 8
    assert torch.allclose(exported(x), model(x), rtol=0.0, atol=1e-6)
    assert _size(exported) == count_parameters(model).nonzero


def test_export_keeps_live_model():
    model = TimeMLP(hidden=(16, 16))
    _prune(model, 0.5)
    state = {key: value.clone() for key, value in model.state_dict().items()}

    export_structured(model)

    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_export_state_dict_keys():
    model = SquashField(hidden=(16, 16))
    _prune(model, 0.5)

    exported = export_structured(model)

    assert list(exported.state_dict()) == list(model.state_dict())


def test_export_after_unstructured_keeps_masks():
    torch.manual_seed(0)
    model = TimeMLP(hidden=(16, 16)).double()
    _prune(model, 0.4)
    prune_unstructured(model, 0.6)
    t, z = _inputs()

    exported = export_structured(model)

    assert torch.allclose(exported(t, z), model(t, z), rtol=0.0, atol=1e-6)
    assert count_parameters(exported).nonzero == count_parameters(model).nonzero


def test_export_trains_as_dense():
    model = TimeMLP(hidden=(16, 16)).double()
    _prune(model, 0.5)
    exported = export_structured(model)
    t, z = _inputs()

    exported(t, z).sum().backward()

    assert all(p.grad is not None for p in exported.parameters())


@pytest.mark.parametrize("kind", ["mlp", "concatsquash"])
def test_export_flows_fields(kind):
    from sparse_cnf.flows.fields import build_field

    torch.manual_seed(0)
    model = build_field(kind, 3, (32, 32, 32), "softplus").double()
    _prune(model, 0.5)
    t, z = _inputs(3)

    exported = export_structured(model)

    assert torch.allclose(exported(t, z), model(t, z), rtol=0.0, atol=1e-6)
    assert _size(exported) == count_parameters(model).nonzero


def test_export_cnf_log_prob():
    torch.manual_seed(0)
    cnf = build_cnf(2, "concatsquash", (16, 16), num_blocks=2, learnable_T=True).double()
    _prune(cnf, 0.5)
    x = _inputs()[1][:16]

    exported = export_structured(cnf)

    assert _size(exported) == count_parameters(cnf).nonzero
    assert torch.allclose(exported.log_prob(x), cnf.log_prob(x), rtol=0.0, atol=1e-6)
