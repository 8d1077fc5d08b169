"""Export of a structured-pruned model to a smaller dense model that computes the same outputs."""

__all__ = ["export_structured"]

import copy

import torch
from torch import Tensor, nn

from sparse_cnf.pruning.structure import FieldStructure, find_fields, removed_neurons


def _replace_parameter(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))


def _shrink_layer(layer: nn.Module, rows: Tensor, columns: Tensor) -> None:
    """Keep the output rows `rows` and input columns `columns` of a masked linear or conv layer."""
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(
            f"export_structured supports convolutions with groups=1 only; {type(layer).__name__} has "
            f"groups={layer.groups}. Export the model without structured pruning of this layer."
        )
    weight = layer.weight.detach()[rows][:, columns]
    mask = layer.weight_mask[rows][:, columns]
    _replace_parameter(layer, "weight", weight)
    layer.weight_mask = mask.clone()
    if layer.bias is not None:
        _replace_parameter(layer, "bias", layer.bias.detach()[rows])

    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = weight.shape[0], weight.shape[1]
    else:
        layer.out_channels, layer.in_channels = weight.shape[0], weight.shape[1]


def _shrink_outputs(module: nn.Module, rows: Tensor) -> None:
    """Keep the output rows `rows` of a plain hyper-layer (weight rows and bias entries)."""
    _replace_parameter(module, "weight", module.weight.detach()[rows])
    if getattr(module, "bias", None) is not None:
        _replace_parameter(module, "bias", module.bias.detach()[rows])

    if isinstance(module, nn.Linear):
        module.out_features = module.weight.shape[0]
    else:
        module.out_channels = module.weight.shape[0]


def _shrink_field(field: FieldStructure) -> None:
    kept = [torch.nonzero(~removed).squeeze(1) for removed in removed_neurons(field)]
    for index, layer in enumerate(field.layers):
        device = layer.weight.device
        all_rows = torch.arange(layer.weight.shape[0], device=device)
        rows = kept[index].to(device) if index < len(kept) else all_rows
        if index == 0:
            columns = torch.arange(layer.weight.shape[1], device=device)
        else:
            time = torch.arange(field.time_columns, device=device)
            columns = torch.cat([time, kept[index - 1].to(device) + field.time_columns])
        _shrink_layer(layer, rows, columns)
        for hyper in field.hyper_layers[index]:
            _shrink_outputs(hyper, rows)


@torch.no_grad()
def export_structured(model: nn.Module) -> nn.Module:
    """Return a copy of `model` with every removed neuron cut out of its layers.

    For each field (see `find_fields`), a removed hidden neuron (whole weight row and whole
    next-layer input column masked) loses its weight row, bias entry, hyper-layer rows and its
    input column in the next layer. The copy computes the same outputs, since those entries
    could not reach the output. Masks of the kept entries are copied, so an export of a model
    that was also pruned unstructured still masks those entries. The live model is not changed.

    For a model pruned by `prune_structured` only, the parameter count of the copy equals
    `count_parameters(model).nonzero`.

    Args:
        model: a structured-pruned model, for example a CNF.

    Returns:
        The smaller copy, of the same class, with the same state-dict keys and smaller tensors.

    Raises:
        ValueError: for a grouped convolution in a field.
    """
    exported = copy.deepcopy(model)
    # NOTE: only the layers change size. A field that stores its widths elsewhere and reads
    # them in forward (for a reshape, say) would need those attributes updated as well.
    for field in find_fields(exported):
        _shrink_field(field)

    return exported
