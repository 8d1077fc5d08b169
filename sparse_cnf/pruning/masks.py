"""Keeping pruned entries at zero: mask application with optimizer state, and weight rewinding."""

__all__ = ["apply_masks", "rewind_weights", "snapshot_weights"]

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sparse_cnf.pruning.structure import find_fields, neuron_parameters, prunable_layers, removed_neurons


def _pruned_entries(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """List (parameter, keep) pairs for every parameter with pruned entries; keep is a bool tensor."""
    entries = []
    for layer in prunable_layers(model):
        if not bool(layer.weight_mask.all()):
            entries.append((layer.weight, layer.weight_mask))

    for field in find_fields(model):
        for index, removed in zip(field.hidden_indices(), removed_neurons(field)):
            if not bool(removed.any()):
                continue
            for param in neuron_parameters(field, index):
                keep = ~removed.reshape(-1, *([1] * (param.dim() - 1)))
                entries.append((param, keep.expand_as(param)))

    return entries


@torch.no_grad()
def apply_masks(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero the pruned entries of `model` and the optimizer state at those entries, in place.

    Pruned entries are the masked weight entries of masked layers and the bias and hyper-layer
    outputs of removed neurons (see `removed_neurons`). Every per-parameter optimizer state
    tensor with the parameter's shape is zeroed at the same positions: `exp_avg`, `exp_avg_sq`
    and `max_exp_avg_sq` of Adam/AdamW, `momentum_buffer` of SGD, and the like. With zero state
    and zero gradient there, the next Adam or SGD step leaves those entries at exactly 0, and
    decoupled weight decay scales 0 to 0. Call this after every optimizer step.

    Args:
        model: any module; masked layers are found by their `weight_mask` buffer.
        optimizer: the optimizer that updates `model`, or None to zero the weights only.
    """
    for param, keep in _pruned_entries(model):
        drop = ~keep
        param.masked_fill_(drop, 0.0)
        if optimizer is None:
            continue
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.masked_fill_(drop, 0)


def snapshot_weights(model: nn.Module) -> dict[str, Tensor]:
    """Return detached copies of every parameter, for `rewind_weights` later.

    The copies share no memory with the live parameters, so later training cannot change them.

    Args:
        model: the model, usually before dense training.

    Returns:
        Parameter name to cloned tensor (same dtype and device).
    """
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@torch.no_grad()
def rewind_weights(model: nn.Module, initial_state: Mapping[str, Tensor]) -> None:
    """Set every surviving parameter entry back to its saved initial value and every pruned one to 0.

    Only parameters are rewound. Buffers in `initial_state` (such as the all-True `weight_mask`
    of a state dict saved before pruning) are ignored, so the current masks stay. Values are
    copied exactly, with a cast when dtype or device differ. The optimizer is not touched: start
    a new one after rewinding.

    Args:
        model: the pruned model.
        initial_state: parameter name to tensor, from `snapshot_weights` or `state_dict()` of the
            same model taken before training.

    Raises:
        ValueError: when a parameter of `model` is missing from `initial_state` or has another shape.

    References:
        The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks. J. Frankle,
        2019, arXiv:1803.03635.
    """
    named = dict(model.named_parameters())
    missing = [name for name in named if name not in initial_state]
    if missing:
        raise ValueError(
            f"`initial_state` has no entry for the parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            "save it with `snapshot_weights(model)` or `model.state_dict()` of this same model."
        )
    for name, param in named.items():
        saved = initial_state[name]
        if saved.shape != param.shape:
            raise ValueError(
                f"`initial_state[{name!r}]` has shape {tuple(saved.shape)} but the parameter has shape "
                f"{tuple(param.shape)}; rewinding needs the state of the same architecture before pruning."
            )

    for name, param in named.items():
        param.copy_(initial_state[name])
    apply_masks(model)
