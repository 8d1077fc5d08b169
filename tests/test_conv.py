"""Tests for the convolutional image fields and their multiscale layout, in float64 where numerics are checked."""

import math

import pytest
import torch

from sparse_cnf.flows import build_cnf
from sparse_cnf.flows.conv import ConvField, build_conv_fields, multiscale_stages, squeeze, unsqueeze
from sparse_cnf.flows.divergence import divergence_exact
from sparse_cnf.pruning import count_parameters, find_fields, prune_ratio, prune_structured, prune_unstructured

F64 = torch.float64
TINY_SHAPE = (1, 4, 4)
# Two scales on 1 x 4 x 4: stages of 1 x 4 x 4, 4 x 2 x 2 and 2 x 2 x 2 (half factored out).
TINY_STAGES = [(0, 1), (1, 4), (1, 2)]
TIGHT = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-10}


def tiny_cnf(
    field: str = "conv", divergence: str = "exact", solver: dict | None = None, hidden: tuple[int, ...] = (3, 3)
) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_cnf(
        16,
        field=field,
        hidden=hidden,
        activation="tanh",
        num_blocks=1,
        divergence=divergence,
        solver=solver or TIGHT,
        image_shape=TINY_SHAPE,
        num_scales=2,
    )

    return model.to(F64)


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 16, generator=torch.Generator().manual_seed(1), dtype=F64)


def test_squeeze_channel_order():
    x = torch.arange(2 * 4 * 6, dtype=F64).reshape(1, 2, 4, 6)
    y = squeeze(x)

    assert y.shape == (1, 8, 2, 3)
    # Channel c * 4 + i * 2 + j contains pixel (2h + i, 2w + j) of input channel c.
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, c * 4 + i * 2 + j], x[0, c, i::2, j::2])


def test_unsqueeze_inverts_squeeze():
    x = torch.randn(2, 3, 8, 4, dtype=F64)

    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_squeeze_rejects_odd_size():
    with pytest.raises(ValueError, match="divisible by 2; got an image of 7 x 7"):
        squeeze(torch.zeros(1, 1, 7, 7))


def test_stages_of_mnist():
    assert multiscale_stages((1, 28, 28)) == [(0, 1), (1, 4), (1, 2), (2, 8), (2, 4)]


def test_stages_of_tiny_images():
    assert multiscale_stages(TINY_SHAPE) == [(0, 1)]
    assert multiscale_stages(TINY_SHAPE, num_scales=2) == TINY_STAGES


def test_stages_reject_too_many_scales():
    with pytest.raises(ValueError, match="divisible by 4; got 4 x 6"):
        multiscale_stages((1, 4, 6), num_scales=3)


def test_field_count_is_blocks_per_stage():
    fields = build_conv_fields("conv", 784, (1, 28, 28), hidden=(4,), num_blocks=2)

    assert len(fields) == 10
    assert [(f.squeezes, f.active_channels) for f in fields[::2]] == multiscale_stages((1, 28, 28))


@pytest.mark.parametrize("layer", ["concat", "concatsquash"])
def test_conv_layer_parameter_count(layer):
    # Per layer: (in + 1) out 9 + out for concat, in out 9 + out + 3 out for concatsquash.
    field = ConvField((2, 4, 4), hidden=(5,), layer=layer)
    expected = {"concat": (3 * 5 * 9 + 5) + (6 * 2 * 9 + 2), "concatsquash": (2 * 5 * 9 + 4 * 5) + (5 * 2 * 9 + 4 * 2)}

    assert sum(p.numel() for p in field.parameters()) == expected[layer]


def test_factored_out_entries_stay_fixed():
    torch.manual_seed(0)
    field = ConvField(TINY_SHAPE, squeezes=1, active_channels=2, hidden=(3,)).to(F64)
    z = images(2).requires_grad_(True)

    dz = field(torch.tensor(0.3, dtype=F64), z)
    moved = squeeze(dz.reshape(2, *TINY_SHAPE))
    jacobian = torch.autograd.functional.jacobian(lambda v: field(torch.tensor(0.3, dtype=F64), v), z)

    assert torch.count_nonzero(moved[:, 2:]) == 0
    assert torch.count_nonzero(moved[:, :2]) > 0
    # No output depends on a factored-out input: channels 2 and 3 of the squeezed image.
    fixed_inputs = squeeze(torch.arange(16).reshape(1, *TINY_SHAPE))[0, 2:].flatten()
    assert torch.count_nonzero(jacobian[:, :, :, fixed_inputs]) == 0


@pytest.mark.parametrize("layer", ["concat", "concatsquash"])
@pytest.mark.parametrize(("squeezes", "active"), TINY_STAGES)
def test_exact_divergence_is_jacobian_trace(layer, squeezes, active):
    torch.manual_seed(0)
    field = ConvField(TINY_SHAPE, squeezes, active, hidden=(3, 3), activation="tanh", layer=layer).to(F64)
    t = torch.tensor(0.7, dtype=F64)
    z = images(2).requires_grad_(True)

    div = divergence_exact(field(t, z), z, create_graph=False)
    jacobian = torch.autograd.functional.jacobian(lambda v: field(t, v), z)
    traces = torch.stack([jacobian[b, :, b, :].trace() for b in range(2)])

    torch.testing.assert_close(div, traces, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("field", ["conv", "conv_concatsquash"])
def test_log_prob_matches_slogdet(field):
    model = tiny_cnf(field, solver={"method": "dopri5", "rtol": 1e-8, "atol": 1e-8})
    x = images(1)[0]

    log_prob = model.log_prob(x.unsqueeze(0))[0]
    z = model(x.unsqueeze(0))[0][0]
    jacobian = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0][0], x)
    expected = -0.5 * (z.pow(2).sum() + 16 * math.log(2 * math.pi)) + torch.linalg.slogdet(jacobian)[1]

    torch.testing.assert_close(log_prob, expected, rtol=1e-6, atol=1e-6)


def test_round_trip():
    model = tiny_cnf()
    x = images()

    z, delta_logp = model(x)
    back, inverse_logp = model.inverse(z)

    torch.testing.assert_close(back, x, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(inverse_logp, -delta_logp, rtol=1e-7, atol=1e-7)


def test_sample_shape_and_dtype():
    model = tiny_cnf(divergence="hutchinson", solver={"rtol": 1e-5, "atol": 1e-5})

    samples = model.sample(4, generator=torch.Generator().manual_seed(0))

    assert samples.shape == (4, 16)
    assert samples.dtype == F64


@pytest.mark.parametrize("field", ["conv", "conv_concatsquash"])
def test_fields_chain_for_pruning(field):
    model = tiny_cnf(field)
    found = find_fields(model)

    assert len(found) == 3
    assert all(f.time_columns == (1 if field == "conv" else 0) for f in found)
    assert all(len(f.hyper_layers[0]) == (0 if field == "conv" else 2) for f in found)


@pytest.mark.parametrize("field", ["conv", "conv_concatsquash"])
def test_unstructured_pruning(field):
    model = tiny_cnf(field, solver={"rtol": 1e-6, "atol": 1e-6})
    dense = count_parameters(model).total

    prune_unstructured(model, 0.5)
    convs = [f.module.prunable_layers() for f in find_fields(model)]
    masked = [layer.weight[~layer.weight_mask] for layers in convs for layer in layers]

    assert abs(prune_ratio(model, dense) - 0.5) <= 0.005 * 0.5
    assert all(torch.count_nonzero(w) == 0 for w in masked)
    assert sum(w.numel() for w in masked) > 0
    assert torch.isfinite(model.log_prob(images())).all()


def test_unstructured_pruning_changes_nothing_but_masked_weights():
    model = tiny_cnf(solver={"rtol": 1e-6, "atol": 1e-6})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    prune_unstructured(model, 0.3)

    for name, param in model.named_parameters():
        if name.endswith("conv.weight"):
            mask = dict(model.named_buffers())[name + "_mask"]
            assert torch.equal(param[mask], before[name][mask]), name
        else:
            assert torch.equal(param, before[name]), name


def test_structured_pruning_removes_channels():
    model = tiny_cnf("conv_concatsquash", solver={"rtol": 1e-6, "atol": 1e-6}, hidden=(16, 16))
    dense = count_parameters(model).total

    prune_structured(model, 0.3)
    first = find_fields(model)[0].layers[0]
    dead_rows = (~first.weight_mask.reshape(first.weight_mask.shape[0], -1).any(dim=1)).sum()

    assert prune_ratio(model, dense) == pytest.approx(0.3, rel=0.005)
    assert dead_rows > 0
    assert torch.isfinite(model.log_prob(images())).all()


def test_image_shape_must_match_dim():
    with pytest.raises(ValueError, match=r"has 16 entries but the data dimension is 784"):
        build_cnf(784, field="conv", image_shape=TINY_SHAPE)


def test_conv_field_needs_image_shape():
    with pytest.raises(ValueError, match="needs `image_shape`"):
        build_cnf(16, field="conv")


def test_mlp_rejects_image_shape():
    with pytest.raises(ValueError, match="apply only to the image fields"):
        build_cnf(16, field="mlp", image_shape=TINY_SHAPE)


def test_unknown_field_lists_conv_kinds():
    with pytest.raises(ValueError, match="mlp, concatsquash, conv, conv_concatsquash; got 'convv'"):
        build_cnf(16, field="convv")
