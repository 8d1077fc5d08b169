"""Discovery of the fields in a model: chains of masked layers, their time columns and hyper-layers."""

__all__ = ["FieldStructure", "find_fields", "neuron_parameters", "prunable_layers", "removed_neurons"]

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn

from sparse_cnf.flows.layers import is_masked


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """Return the masked layers of `model` (those with a `weight_mask` buffer) in module order.

    Args:
        model: any module; it may contain no masked layer at all.

    Returns:
        Each masked layer once, in the order of `model.modules()`.
    """
    return [module for module in model.modules() if is_masked(module)]


@dataclass(frozen=True, eq=False)
class FieldStructure:
    """A chain of masked layers in which the outputs of layer l are inputs of layer l + 1.

    Hidden neuron j of layer l is row j of `layers[l].weight` (output channel j for a
    convolution) and input column j + `time_columns` of `layers[l + 1].weight`. The last layer
    is the output layer. `hyper_layers[l]` are modules whose output row j belongs to neuron j of
    layer l (the concatsquash gate and shift): their weight row j and bias entry j serve that
    neuron only.
    """

    module: nn.Module
    layers: tuple[nn.Module, ...]
    time_columns: int
    hyper_layers: tuple[tuple[nn.Module, ...], ...]

    def hidden_indices(self) -> range:
        """Return the indices of the hidden layers (every layer but the output layer)."""
        return range(len(self.layers) - 1)


def _innermost_declared_fields(model: nn.Module) -> list[nn.Module]:
    candidates = [m for m in model.modules() if callable(getattr(m, "prunable_layers", None))]
    inner = []
    for candidate in candidates:
        nested = any(other is not candidate and other in set(candidate.modules()) for other in candidates)
        if not nested:
            inner.append(candidate)

    return inner


def _parent_of(root: nn.Module, child: nn.Module) -> nn.Module | None:
    for module in root.modules():
        if any(sub is child for sub in module.children()):
            return module

    return None


def _sibling_hyper_layers(field: nn.Module, layer: nn.Module) -> tuple[nn.Module, ...]:
    """Find plain linear/conv siblings of `layer` in its wrapper whose outputs match its outputs."""
    parent = _parent_of(field, layer)
    if parent is None or parent is field or isinstance(parent, (nn.Sequential, nn.ModuleList)):
        return ()

    out = layer.weight.shape[0]
    siblings = []
    for sibling in parent.children():
        plain = isinstance(sibling, (nn.Linear, nn.Conv2d)) and not is_masked(sibling)
        if sibling is not layer and plain and sibling.weight.shape[0] == out:
            siblings.append(sibling)

    return tuple(siblings)


def _hyper_layers_of(field: nn.Module, index: int, layer: nn.Module) -> tuple[nn.Module, ...]:
    declared = getattr(field, "hyper_layers", None)
    if callable(declared):
        return tuple(declared(index))

    return _sibling_hyper_layers(field, layer)


def _check_chain(field: nn.Module, layers: list[nn.Module], time_columns: int) -> None:
    for index, (layer, following) in enumerate(zip(layers[:-1], layers[1:])):
        out, expected_in = layer.weight.shape[0], following.weight.shape[1]
        if out + time_columns != expected_in:
            raise ValueError(
                f"the masked layers of {type(field).__name__} do not form a chain: layer {index} has "
                f"{out} outputs, so layer {index + 1} should have {out + time_columns} inputs "
                f"({out} + time_columns={time_columns}) but has {expected_in}. Give the field a "
                "`prunable_layers()` method that lists its masked layers from input to output, and a "
                "`time_columns` attribute with the number of time inputs that precede the neurons."
            )


def _make_field(module: nn.Module, layers: Iterable[nn.Module], time_columns: int) -> FieldStructure:
    layers = list(layers)
    for layer in layers:
        if not is_masked(layer):
            raise TypeError(
                f"{type(module).__name__}.prunable_layers() returned a {type(layer).__name__}; it must "
                "return only masked layers (MaskedLinear or MaskedConv2d)."
            )
    if isinstance(time_columns, bool) or not isinstance(time_columns, int) or time_columns < 0:
        raise ValueError(
            f"{type(module).__name__}.time_columns must be a non-negative int; got {time_columns!r}."
        )
    _check_chain(module, layers, time_columns)
    hyper = tuple(_hyper_layers_of(module, index, layer) for index, layer in enumerate(layers))

    return FieldStructure(module, tuple(layers), time_columns, hyper)


def find_fields(model: nn.Module) -> list[FieldStructure]:
    """Find the chains of masked layers that structured pruning may cut neurons from.

    A field is the innermost module with a `prunable_layers()` method. Its layers are what that
    method returns (input to output), and its time columns are its `time_columns` attribute (0
    when absent). Hyper-layers come from the field's `hyper_layers(layer_index)` when it has one,
    otherwise from plain `nn.Linear`/`nn.Conv2d` siblings of a masked layer inside the same
    wrapper module whose output size equals the layer's (the concatsquash layout). In a model
    without such modules, every `nn.Sequential` with masked children is a field with no time
    columns whose layers are those children in order.

    Args:
        model: the model, for example a whole CNF with several blocks.

    Returns:
        The fields in module order; empty when the model has no field (unstructured pruning
        still works on such a model).

    Raises:
        ValueError: when a field's layer shapes do not chain (outputs + time columns = next inputs).
        TypeError: when `prunable_layers()` returns a layer without a mask.
    """
    declared = _innermost_declared_fields(model)
    if declared:
        return [
            _make_field(module, module.prunable_layers(), getattr(module, "time_columns", 0))
            for module in declared
        ]

    fields = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            layers = [child for child in module.children() if is_masked(child)]
            if layers:
                fields.append(_make_field(module, layers, 0))

    return fields


def _flat_rows(mask: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], -1)


def _flat_columns(mask: Tensor) -> Tensor:
    return mask.transpose(0, 1).reshape(mask.shape[1], -1)


def removed_neurons(field: FieldStructure) -> list[Tensor]:
    """Mark the removed neurons of every hidden layer of `field`.

    A hidden neuron is removed when its whole weight row is masked and its whole input column
    in the next layer is masked. Such a neuron neither reads the input nor reaches the output,
    so its bias and hyper-layer outputs cannot change what the field computes: pruning code
    zeroes them and counts them as pruned. Structured pruning removes neurons this way;
    unstructured pruning can do so too at high ratios, with the same consequence.

    Args:
        field: a field from `find_fields`.

    Returns:
        One bool tensor per hidden layer, shape (out_features,), True where the neuron is
        removed.
    """
    removed = []
    for index in field.hidden_indices():
        layer, following = field.layers[index], field.layers[index + 1]
        row_dead = ~_flat_rows(layer.weight_mask).any(dim=1)
        column_dead = ~_flat_columns(following.weight_mask).any(dim=1)[field.time_columns :]
        removed.append(row_dead & column_dead)

    return removed


def neuron_parameters(field: FieldStructure, index: int) -> list[Tensor]:
    """List the parameters of layer `index` other than its weight whose entry j serves neuron j.

    Returns:
        The layer's bias and every hyper-layer's weight and bias; slice j along dim 0 of each
        belongs to neuron j only.
    """
    params = []
    layer = field.layers[index]
    if layer.bias is not None:
        params.append(layer.bias)
    for hyper in field.hyper_layers[index]:
        params.append(hyper.weight)
        if getattr(hyper, "bias", None) is not None:
            params.append(hyper.bias)

    return params

