"""Global unstructured magnitude pruning and structured neuron pruning to a target prune ratio."""

__all__ = ["METHODS", "RATIO_TOLERANCE", "prune", "prune_structured", "prune_unstructured"]

import math
import warnings

import torch
from torch import Tensor, nn

from sparse_cnf.pruning.counting import ParameterCounts, count_parameters
from sparse_cnf.pruning.masks import apply_masks
from sparse_cnf.pruning.structure import FieldStructure, find_fields, prunable_layers, removed_neurons

# NOTE: torch.nn.utils.prune and Lightning's ModelPruning are not used. Their masks live in a
# re-parametrization (`weight_orig` + `weight_mask`) that changes state-dict keys and parameter
# order when pruning starts, which breaks strict loading into a fresh model and optimizer state
# on resume. Neither counts the prune ratio over all parameters, removes whole neurons together
# with the next layer's input columns, or exports a smaller model. The masks here are the
# always-present `weight_mask` buffers of the flows' masked layers.

METHODS = ("unstructured", "structured")

# Largest relative deviation |achieved - requested| / requested of the prune ratio.
RATIO_TOLERANCE = 0.005


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ValueError(f"`ratio` must be a float in [0, 1), the share of parameters to remove; got {ratio!r}.")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(
            f"`ratio` must lie in [0, 1) (0.9 removes 90 % of all parameters); got {ratio!r}."
        )

    return float(ratio)


def _dense_total(counts: ParameterCounts, dense_total: int | None) -> int:
    if dense_total is None:
        return counts.total
    if isinstance(dense_total, bool) or not isinstance(dense_total, int) or dense_total < counts.total:
        raise ValueError(
            f"`dense_total` must be an int at least the model's {counts.total} parameters (the parameter "
            f"count of the dense model, `count_parameters(dense_model).total`); got {dense_total!r}."
        )

    return dense_total


def _within_tolerance(nonzero: int, ratio: float, dense_total: int) -> bool:
    achieved = 1.0 - nonzero / dense_total

    return abs(achieved - ratio) <= RATIO_TOLERANCE * ratio + 0.5 / dense_total


def _check_not_below_current(counts: ParameterCounts, ratio: float, dense_total: int, target: int) -> None:
    if counts.nonzero < target and not _within_tolerance(counts.nonzero, ratio, dense_total):
        current = 1.0 - counts.nonzero / dense_total
        raise ValueError(
            f"`ratio`={ratio!r} is below the model's current prune ratio {current:.4f}; pruned entries "
            "cannot grow back, so prune ratios must increase from round to round."
        )


def _write_masks(layers: list[nn.Module], masks: list[Tensor]) -> None:
    for layer, mask in zip(layers, masks):
        layer.weight_mask.copy_(mask)


# ------------------------------------------------------------------------------------------------
# Unstructured


class _Ranking:
    """The surviving weight entries of all masked layers, ordered by decreasing magnitude."""

    def __init__(self, layers: list[nn.Module]):
        scores, owners, positions = [], [], []
        for index, layer in enumerate(layers):
            mask = layer.weight_mask.reshape(-1)
            flat = torch.nonzero(mask).squeeze(1)
            scores.append(layer.weight.detach().reshape(-1)[flat].abs().double().cpu())
            owners.append(torch.full((flat.numel(),), index, dtype=torch.long))
            positions.append(flat.cpu())

        self.layers = layers
        self.scores = torch.cat(scores)
        order = torch.argsort(self.scores, descending=True, stable=True)
        self.owners = torch.cat(owners)[order]
        self.positions = torch.cat(positions)[order]

    def __len__(self) -> int:
        return self.positions.numel()

    def masks(self, keep: int) -> list[Tensor]:
        """Return masks that keep the `keep` largest entries and mask all others."""
        chosen = torch.arange(keep)
        masks = []
        for index, layer in enumerate(self.layers):
            flat = torch.zeros(layer.weight_mask.numel(), dtype=torch.bool)
            rows = chosen[self.owners[chosen] == index]
            flat[self.positions[rows]] = True
            masks.append(flat.reshape(layer.weight_mask.shape).to(layer.weight_mask.device))

        return masks


def _largest_keep(model: nn.Module, ranking: _Ranking, target: int) -> tuple[int, int]:
    """Find the largest number of kept entries whose nonzero count is at most `target`.

    Returns (kept entries, nonzero count) and writes the matching masks into the model. The count
    exceeds `target` only when even keeping no entry leaves too many. The nonzero count rises
    strictly with every kept entry (by more than 1 when the entry gives a removed neuron its bias
    back), so a binary search finds the number.
    """

    def nonzero(keep: int) -> int:
        _write_masks(ranking.layers, ranking.masks(keep))
        return count_parameters(model).nonzero

    # Each kept entry adds at least 1, so keeping target - (non-prunable entries) is never too many.
    counts = count_parameters(model)
    low = min(len(ranking), max(0, target - (counts.total - counts.prunable)))
    low_count = nonzero(low)
    if low_count >= target:
        return low, low_count

    high = len(ranking)
    while low < high:
        middle = (low + high + 1) // 2
        middle_count = nonzero(middle)
        if middle_count <= target:
            low, low_count = middle, middle_count
        else:
            high = middle - 1
    nonzero(low)

    return low, low_count


def _set_entry(ranking: _Ranking, rank: int, value: bool) -> None:
    layer = ranking.layers[int(ranking.owners[rank])]
    layer.weight_mask.view(-1)[int(ranking.positions[rank])] = value


def _step_by_ones(model: nn.Module, ranking: _Ranking, ranks: range, value: bool, steps: int) -> int:
    """Set the mask entries at `ranks` to `value` one by one, keeping only changes of exactly 1.

    A change that removes or revives a neuron moves the nonzero count by more than 1 (its bias
    goes or comes back), so it is undone. Returns the steps still missing.
    """
    nonzero = count_parameters(model).nonzero
    sign = 1 if value else -1
    for rank in ranks:
        if steps == 0:
            break
        _set_entry(ranking, rank, value)
        changed = count_parameters(model).nonzero
        if changed == nonzero + sign:
            nonzero, steps = changed, steps - 1
        else:
            _set_entry(ranking, rank, not value)

    return steps


def _close_gap(model: nn.Module, ranking: _Ranking, keep: int, nonzero: int, target: int) -> None:
    """Reach `target` exactly when keeping `keep` entries gives fewer and `keep` + 1 gives more.

    First the next-ranked entries that revive no neuron are unmasked. If that fails, the entry at
    rank `keep` is kept and the smallest kept entries whose removal kills no neuron are masked.
    Either way only a few entries differ from plain magnitude order. When both fail, the masks
    of `keep` entries stay.
    """
    if _step_by_ones(model, ranking, range(keep, len(ranking)), True, target - nonzero) == 0:
        return

    _write_masks(ranking.layers, ranking.masks(keep + 1))
    excess = count_parameters(model).nonzero - target
    if _step_by_ones(model, ranking, range(keep, -1, -1), False, excess) == 0:
        return

    _write_masks(ranking.layers, ranking.masks(keep))


def prune_unstructured(model: nn.Module, ratio: float, dense_total: int | None = None) -> ParameterCounts:
    """Prune the smallest-magnitude weights of all masked layers together to a target prune ratio.

    Only weights of masked layers are ranked, by |w| over all of them at once (global magnitude
    pruning). Biases, hyper-layers and other parameters are never ranked. Entries masked before
    stay masked. The number of kept weights is chosen so that 1 - nonzero / dense_total equals
    `ratio`, with nonzero counted over all parameters by `count_parameters`. The nonzero count
    is then round((1 - ratio) * dense_total) exactly, unless the masks leave no choice. At
    extreme ratios a hidden neuron can lose every input and output weight. It then counts as
    removed, and `apply_masks` zeroes its bias.

    Args:
        model: any module with masked layers.
        ratio: target prune ratio in [0, 1), at least the model's current ratio.
        dense_total: parameter count of the dense model; None uses the total of `model`.

    Returns:
        The counts after pruning.

    Raises:
        ValueError: when `ratio` is outside [0, 1) or below the current prune ratio, or when more
            than (1 - ratio) * dense_total parameters remain even with every masked-layer weight
            pruned. The model is left unchanged.

    References:
        Learning both Weights and Connections for Efficient Neural Networks. S. Han, 2015,
        arXiv:1506.02626.
    """
    with torch.no_grad():
        counts, message = _prune_unstructured(model, ratio, dense_total)
    if message:
        warnings.warn(message, stacklevel=2)

    return counts


def _prune_unstructured(model: nn.Module, ratio: float, dense_total: int | None) -> tuple[ParameterCounts, str]:
    ratio = _check_ratio(ratio)
    counts = count_parameters(model)
    dense_total = _dense_total(counts, dense_total)
    target = round((1.0 - ratio) * dense_total)
    _check_not_below_current(counts, ratio, dense_total, target)
    if counts.nonzero <= target:
        return counts, ""

    layers = prunable_layers(model)
    saved = [layer.weight_mask.clone() for layer in layers]
    ranking = _Ranking(layers)
    keep, nonzero = _largest_keep(model, ranking, target)
    if nonzero > target:
        _write_masks(layers, saved)
        raise ValueError(
            f"`ratio`={ratio!r} is unreachable by unstructured pruning: it leaves {target} of "
            f"{dense_total} parameters, but even with every prunable weight masked {nonzero} remain "
            f"(max ratio {1.0 - nonzero / dense_total:.4f}). Request a smaller ratio, use a wider "
            "field, or count a ratio over fewer parameters."
        )
    if nonzero < target:
        _close_gap(model, ranking, keep, nonzero, target)

    apply_masks(model)
    counts = count_parameters(model)
    message = ""
    if not _within_tolerance(counts.nonzero, ratio, dense_total):
        message = (
            f"unstructured pruning reached prune ratio {1.0 - counts.nonzero / dense_total:.5f}, not the "
            f"requested {ratio!r} within {RATIO_TOLERANCE:.1%} relative, because at this sparsity keeping "
            "or dropping one more weight revives or removes whole neurons; request a nearby ratio."
        )

    return counts, message


# ------------------------------------------------------------------------------------------------
# Structured


class _NeuronPlan:
    """Neuron ranking of every hidden layer of every field, for cutting a fraction of each."""

    def __init__(self, fields: list[FieldStructure]):
        self.fields = fields
        self.hidden = [(field, index) for field in fields for index in field.hidden_indices()]
        self.order: list[Tensor] = []
        self.already: list[int] = []
        for field, removed in zip(fields, (removed_neurons(f) for f in fields)):
            for index in field.hidden_indices():
                layer = field.layers[index]
                weight = (layer.weight.detach() * layer.weight_mask).reshape(layer.weight.shape[0], -1)
                # L1 norm of each weight row; removed neurons rank first so they stay removed.
                score = weight.abs().sum(dim=1).double().cpu()
                score[removed[index].cpu()] = -1.0
                self.order.append(torch.argsort(score, stable=True))
                self.already.append(int(removed[index].sum()))
        self.saved = [[layer.weight_mask.clone() for layer in field.layers] for field in fields]

    def widths(self) -> list[int]:
        return [field.layers[index].weight.shape[0] for field, index in self.hidden]

    def fractions(self) -> list[float]:
        """Return the candidate fractions i / width of every hidden layer, ascending."""
        return sorted({i / width for width in self.widths() for i in range(width)})

    def cut_counts(self, fraction: float) -> list[int]:
        """Return the neurons to remove per hidden layer: round(fraction * width), keeping at least one."""
        counts = []
        for width, already in zip(self.widths(), self.already):
            cut = min(width - 1, math.floor(fraction * width + 0.5))
            counts.append(max(already, cut))

        return counts

    def write(self, fraction: float) -> None:
        """Write the masks that remove `cut_counts(fraction)` neurons per hidden layer."""
        cuts = iter(zip(self.order, self.cut_counts(fraction)))
        for field, saved in zip(self.fields, self.saved):
            masks = [mask.clone() for mask in saved]
            for index in field.hidden_indices():
                order, cut = next(cuts)
                keep = torch.ones(masks[index].shape[0], dtype=torch.bool)
                keep[order[:cut]] = False
                keep = keep.to(masks[index].device)
                row_shape = (-1,) + (1,) * (masks[index].dim() - 1)
                masks[index] &= keep.reshape(row_shape)
                columns = torch.cat([keep.new_ones(field.time_columns), keep])
                column_shape = (1, -1) + (1,) * (masks[index + 1].dim() - 2)
                masks[index + 1] &= columns.reshape(column_shape)
            _write_masks(list(field.layers), masks)

    def restore(self) -> None:
        for field, saved in zip(self.fields, self.saved):
            _write_masks(list(field.layers), saved)


def _closest_fraction(model: nn.Module, plan: _NeuronPlan, target: int) -> tuple[float, int]:
    """Return the candidate fraction whose nonzero count is closest to `target`, and that count.

    The count falls as the fraction grows (the removed sets are nested), so a binary search finds
    the first fraction whose count is at most `target`. The result is it or the fraction before.
    """

    def nonzero(fraction: float) -> int:
        plan.write(fraction)
        return count_parameters(model).nonzero

    fractions = plan.fractions()
    low, high = 0, len(fractions) - 1
    while low < high:
        middle = (low + high) // 2
        if nonzero(fractions[middle]) > target:
            low = middle + 1
        else:
            high = middle
    candidates = [fractions[low]] + ([fractions[low - 1]] if low > 0 else [])
    best = min(candidates, key=lambda fraction: abs(nonzero(fraction) - target))

    return best, nonzero(best)


def prune_structured(model: nn.Module, ratio: float, dense_total: int | None = None) -> ParameterCounts:
    """Remove whole hidden neurons, the same fraction in every hidden layer, to a target prune ratio.

    Neurons of each hidden layer are ranked by the L1 norm of their (masked) weight rows, or
    output-channel filters for a convolution. Removing neuron j of layer l masks row j of layer
    l and input column j + `time_columns` of layer l + 1, and zeroes the neuron's bias and
    hyper-layer outputs (concatsquash gate and shift rows). Those entries count as pruned,
    so the nonzero count equals the size of `export_structured(model)`. The output layer keeps
    all its neurons, and every hidden layer keeps at least one. Neurons removed before stay
    removed. The fraction f is the same for every hidden layer of every field, and each layer
    loses round(f * width) neurons, so the reachable ratios are discrete. The candidates for f
    are i / width for every hidden width, and the one whose nonzero count is closest to
    (1 - ratio) * dense_total wins.

    Args:
        model: a model with fields (see `find_fields`), for example a CNF.
        ratio: target prune ratio in [0, 1), at least the model's current ratio.
        dense_total: parameter count of the dense model; None uses the total of `model`.

    Returns:
        The counts after pruning.

    Raises:
        ValueError: when `ratio` is outside [0, 1) or below the current prune ratio, or when the
            model has no hidden layer to cut. Also when even one neuron per hidden layer leaves
            more than (1 - ratio) * dense_total parameters. The model is left unchanged.

    Warns:
        UserWarning: when the closest reachable ratio is more than `RATIO_TOLERANCE` (relative)
            away from `ratio`.

    References:
        Pruning Filters for Efficient ConvNets. H. Li, 2017, arXiv:1608.08710.
    """
    with torch.no_grad():
        counts, message = _prune_structured(model, ratio, dense_total)
    if message:
        warnings.warn(message, stacklevel=2)

    return counts


def _prune_structured(model: nn.Module, ratio: float, dense_total: int | None) -> tuple[ParameterCounts, str]:
    ratio = _check_ratio(ratio)
    fields = find_fields(model)
    if not any(len(field.layers) > 1 for field in fields):
        raise ValueError(
            "structured pruning needs a field with at least one hidden layer: a module with a "
            "`prunable_layers()` method (or an nn.Sequential) whose masked layers chain from input to "
            f"output; {type(model).__name__} has {len(fields)} such fields. Use method 'unstructured'."
        )
    counts = count_parameters(model)
    dense_total = _dense_total(counts, dense_total)
    target = round((1.0 - ratio) * dense_total)
    _check_not_below_current(counts, ratio, dense_total, target)
    if counts.nonzero <= target:
        return counts, ""

    plan = _NeuronPlan(fields)
    plan.write(plan.fractions()[-1])
    least = count_parameters(model).nonzero
    if least > target and not _within_tolerance(least, ratio, dense_total):
        plan.restore()
        raise ValueError(
            f"`ratio`={ratio!r} is unreachable by structured pruning: it leaves {target} of {dense_total} "
            f"parameters, but keeping one neuron per hidden layer leaves {least} (max ratio "
            f"{1.0 - least / dense_total:.4f}). Request a smaller ratio or use method 'unstructured'."
        )
    fraction, _ = _closest_fraction(model, plan, target)
    plan.write(fraction)
    apply_masks(model)
    counts = count_parameters(model)
    message = ""
    if not _within_tolerance(counts.nonzero, ratio, dense_total):
        message = (
            f"structured pruning reached prune ratio {1.0 - counts.nonzero / dense_total:.5f} (removing a "
            f"fraction {fraction:.4f} of the neurons of every hidden layer), not the requested {ratio!r} within "
            f"{RATIO_TOLERANCE:.1%} relative: whole neurons allow only discrete ratios. Request the reached "
            "ratio to silence this, or use method 'unstructured' for exact ratios."
        )

    return counts, message


def prune(model: nn.Module, method: str, ratio: float, dense_total: int | None = None) -> ParameterCounts:
    """Prune `model` to `ratio` with `method` ("unstructured" or "structured").

    Args:
        model: the model to prune in place.
        method: one of `METHODS`.
        ratio: target prune ratio in [0, 1).
        dense_total: parameter count of the dense model; None uses the total of `model`.

    Returns:
        The counts after pruning.

    Raises:
        ValueError: on an unknown method, and as `prune_unstructured` / `prune_structured`.
    """
    methods = {"unstructured": _prune_unstructured, "structured": _prune_structured}
    if method not in methods:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}; got {method!r}.")

    with torch.no_grad():
        counts, message = methods[method](model, ratio, dense_total)
    if message:
        warnings.warn(message, stacklevel=2)

    return counts
