"""Tests of apply_masks with optimizer state, weight rewinding, and copying pruned models."""

import copy
import gc
import pickle
import tracemalloc

import pytest
import torch
from _pruning_fields import SquashField, TimeMLP, TwoFields

from sparse_cnf.pruning import (
    apply_masks,
    find_fields,
    prune_unstructured,
    removed_neurons,
    rewind_weights,
    snapshot_weights,
)


@pytest.fixture
def one_thread():
    """Run on one torch thread and restore the count after, because these small ops lose from
    thread contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.tensor(0.5, dtype=torch.float64), torch.randn(n, 2, generator=generator, dtype=torch.float64)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, masks: bool = True) -> None:
    t, z = _batch()
    for _ in range(steps):
        optimizer.zero_grad()
        model(t, z).square().mean().backward()
        optimizer.step()
        if masks:
            apply_masks(model, optimizer)


def _pruned_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [layer.weight[~layer.weight_mask] for layer in model.prunable_layers()]


def test_apply_masks_zeroes_weights():
    model = TimeMLP()
    model.layers[1].weight_mask[2:5] = False

    apply_masks(model)

    assert bool((model.layers[1].weight[2:5] == 0).all())
    assert bool((model.layers[1].weight[5:] != 0).all())


def test_apply_masks_keeps_plain_biases():
    model = TimeMLP()
    model.layers[0].weight_mask[3] = False
    before = model.layers[0].bias.clone()

    apply_masks(model)

    assert torch.equal(model.layers[0].bias, before)


def test_apply_masks_removed_neuron_outputs():
    model = SquashField()
    model.layers[0].linear.weight_mask[4] = False
    model.layers[1].linear.weight_mask[:, 4] = False

    apply_masks(model)

    assert model.layers[0].linear.bias[4].item() == 0.0
    assert model.layers[0].hyper_gate.weight[4].item() == 0.0
    assert model.layers[0].hyper_gate.bias[4].item() == 0.0
    assert model.layers[0].hyper_bias.weight[4].item() == 0.0
    assert model.layers[0].hyper_gate.bias[3].item() != 0.0


@pytest.mark.parametrize(
    ("make", "keys"),
    [
        (lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
        (lambda p: torch.optim.AdamW(p, lr=1e-2), ("exp_avg", "exp_avg_sq")),
        (lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), ("momentum_buffer",)),
    ],
)
def test_apply_masks_optimizer_state(make, keys):
    model = TimeMLP().double()
    optimizer = make(model.parameters())
    _train(model, optimizer, 3, masks=False)
    layer = model.layers[1]
    layer.weight_mask[:, :4] = False

    apply_masks(model, optimizer)

    for key in keys:
        state = optimizer.state[layer.weight][key]
        assert bool((state[:, :4] == 0).all()), key
        assert bool((state[:, 4:] != 0).any()), key


def test_p3_adamw_pruned_stay_zero(one_thread):
    torch.manual_seed(0)
    model = TimeMLP().double()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(model, optimizer, 50, masks=False)
    prune_unstructured(model, 0.5)
    t, z = _batch()

    # The dense training's momentum is left in the optimizer on purpose.
    for step in range(1000):
        optimizer.zero_grad()
        model(t, z).square().mean().backward()
        optimizer.step()
        apply_masks(model, optimizer)
        for values in _pruned_weights(model):
            assert bool((values == 0.0).all()), f"step {step}"

    for layer in model.layers:
        state = optimizer.state[layer.weight]
        assert bool((state["exp_avg"][~layer.weight_mask] == 0).all())
        assert bool((state["exp_avg_sq"][~layer.weight_mask] == 0).all())


def test_p3_one_apply_then_no_regrowth():
    torch.manual_seed(0)
    model = TimeMLP().double()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    _train(model, optimizer, 20, masks=False)
    prune_unstructured(model, 0.5)
    apply_masks(model, optimizer)

    _train(model, optimizer, 20, masks=False)

    assert all(bool((values == 0.0).all()) for values in _pruned_weights(model))


def test_p2_rewind_exact():
    torch.manual_seed(0)
    model = TimeMLP().double()
    initial = snapshot_weights(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 20)
    prune_unstructured(model, 0.6)
    removed = removed_neurons(find_fields(model)[0]) + [torch.zeros(2, dtype=torch.bool)]

    rewind_weights(model, initial)

    for index, layer in enumerate(model.layers):
        mask, weight, bias = layer.weight_mask, layer.weight, layer.bias
        assert torch.equal(weight[mask], initial[f"layers.{index}.weight"][mask])
        assert bool((weight[~mask] == 0.0).all())
        assert torch.equal(bias[~removed[index]], initial[f"layers.{index}.bias"][~removed[index]])
        assert bool((bias[removed[index]] == 0.0).all())


def test_p2_snapshot_not_shared():
    model = TimeMLP()
    initial = snapshot_weights(model)

    with torch.no_grad():
        model.layers[0].weight.add_(1.0)

    assert not torch.equal(initial["layers.0.weight"], model.layers[0].weight)


def test_rewind_from_state_dict_keeps_masks():
    model = TimeMLP()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    prune_unstructured(model, 0.5)
    masks = [layer.weight_mask.clone() for layer in model.layers]

    rewind_weights(model, state)

    assert all(torch.equal(layer.weight_mask, mask) for layer, mask in zip(model.layers, masks))


def test_rewind_missing_parameter():
    model = TwoFields()
    initial = snapshot_weights(model)
    del initial["T"]

    with pytest.raises(ValueError, match=r"no entry for the parameters \['T'\].*snapshot_weights"):
        rewind_weights(model, initial)


def test_rewind_shape_mismatch():
    model = TimeMLP()
    initial = snapshot_weights(TimeMLP(hidden=(8, 4)))

    with pytest.raises(ValueError, match=r"'layers.1.weight'.*shape \(4, 9\).*\(8, 9\)"):
        rewind_weights(model, initial)


def test_p1_deepcopy_after_backward():
    model = TwoFields().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 2)
    prune_unstructured(model, 0.5)
    t, z = _batch()
    model(t, z).sum().backward()

    copied = copy.deepcopy(model)

    assert torch.equal(copied(t, z), model(t, z))


def test_p1_pickle_round_trip():
    model = TwoFields().double()
    prune_unstructured(model, 0.5)
    t, z = _batch()

    restored = pickle.loads(pickle.dumps(model))

    assert torch.equal(restored(t, z), model(t, z))
    assert torch.equal(restored.first.layers[1].weight_mask, model.first.layers[1].weight_mask)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def test_p1_ten_rounds_no_growth(one_thread):
    torch.manual_seed(0)
    model = TwoFields().double()
    tensors, traced = [], []
    tracemalloc.start()
    try:
        for round_index, ratio in enumerate([0.08 * k for k in range(1, 11)]):
            prune_unstructured(model, ratio)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
            _train(model, optimizer, 5)
            copy.deepcopy(model)
            del optimizer
            # Counting live tensors walks every Python object, so it runs twice only.
            if round_index in (2, 9):
                tensors.append(_live_tensors())
                traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()

    assert tensors[1] == tensors[0]
    assert traced[1] - traced[0] < 256 * 1024
