"""Parameter counts of a pruned model: total, prunable and nonzero, and the prune ratio."""

__all__ = ["ParameterCounts", "count_parameters", "prune_ratio"]

from dataclasses import dataclass

from torch import nn

from sparse_cnf.pruning.structure import find_fields, neuron_parameters, prunable_layers, removed_neurons


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a model.

    Attributes:
        total: entries of all parameters, pruned or not (each shared parameter once).
        prunable: entries of the weights of masked layers.
        nonzero: entries not removed by pruning, which is `total` minus the masked weight
            entries minus the bias and hyper-layer entries of removed neurons (see
            `removed_neurons`).
            For a structured-pruned model this equals the size of `export_structured(model)`.
    """

    total: int
    prunable: int
    nonzero: int

    @property
    def pruned(self) -> int:
        """Entries removed by pruning."""
        return self.total - self.nonzero


def _pruned_neuron_entries(model: nn.Module) -> int:
    pruned = 0
    for field in find_fields(model):
        for index, removed in zip(field.hidden_indices(), removed_neurons(field)):
            count = int(removed.sum())
            if count == 0:
                continue
            for param in neuron_parameters(field, index):
                pruned += count * (param.numel() // param.shape[0])

    return pruned


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count the total, prunable and nonzero parameters of `model`.

    Masked weight entries count as pruned whatever their value. The bias and hyper-layer
    outputs of a removed neuron count as pruned too, because they cannot change the output and
    `export_structured` drops them.

    Args:
        model: any module; masked layers are found by their `weight_mask` buffer.

    Returns:
        The counts.
    """
    total = sum(p.numel() for p in model.parameters())
    layers = prunable_layers(model)
    prunable = sum(layer.weight.numel() for layer in layers)
    masked = sum(int((~layer.weight_mask).sum()) for layer in layers)
    nonzero = total - masked - _pruned_neuron_entries(model)

    return ParameterCounts(total=total, prunable=prunable, nonzero=nonzero)


def prune_ratio(model: nn.Module, dense_total: int | None = None) -> float:
    """Return the prune ratio 1 - nonzero / dense_total, counted over all parameters.

    Args:
        model: the pruned model.
        dense_total: parameter count of the dense model; None uses the total of `model`, which
            is right for a masked model but not for an exported smaller one.

    Returns:
        The ratio in [0, 1].

    Raises:
        ValueError: when `dense_total` is not a positive int or is smaller than the nonzero count.
    """
    counts = count_parameters(model)
    dense_total = counts.total if dense_total is None else _check_dense_total(dense_total, counts.nonzero)
    if dense_total == 0:
        return 0.0

    return 1.0 - counts.nonzero / dense_total


def _check_dense_total(dense_total: int, nonzero: int) -> int:
    if isinstance(dense_total, bool) or not isinstance(dense_total, int) or dense_total < 1:
        raise ValueError(
            f"`dense_total` must be a positive int (the parameter count of the dense model); got {dense_total!r}."
        )
    if dense_total < nonzero:
        raise ValueError(
            f"`dense_total`={dense_total} is smaller than the model's {nonzero} nonzero parameters; pass the "
            "parameter count of the dense model, `count_parameters(dense_model).total`."
        )

    return dense_total
