"""Vector fields f(t, z) for continuous normalizing flows: a time-concatenated MLP and concatsquash."""

__all__ = [
    "ACTIVATIONS",
    "FIELD_KINDS",
    "ConcatSquashField",
    "ConcatSquashLinear",
    "MLPField",
    "build_field",
]

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sparse_cnf.flows.layers import MaskedLinear

# NOTE: "swish" is x * sigmoid(x) (nn.SiLU) without a parameter. FFJORD's Swish learns a
# scale inside the sigmoid, which would add one parameter per activation.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "swish": nn.SiLU,
}

FIELD_KINDS = ("mlp", "concatsquash")


def _make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {', '.join(ACTIVATIONS)}; got {name!r}."
        )

    return ACTIVATIONS[name]()


def _layer_sizes(dim: int, hidden: Sequence[int]) -> list[int]:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"`dim` must be a positive int; got {dim!r}.")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"`hidden` must be a sequence of positive ints such as (64, 64, 64); got {hidden!r}.")
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"`hidden` must contain positive ints only; got {list(hidden)!r}.")

    return [dim, *hidden, dim]


class MLPField(nn.Module):
    """A multilayer perceptron f(t, z) with optional time input.

    With `time_input`, t is concatenated as input column 0 of every layer (FFJORD's
    ConcatLinear), so hidden neuron j of layer l is input column j + `time_columns` of layer
    l + 1. No activation follows the output layer.

    Args:
        dim: state dimension D.
        hidden: widths of the hidden layers, for example (64, 64, 64).
        activation: a key of `ACTIVATIONS`.
        time_input: whether t is an input of every layer.

    Raises:
        ValueError: on a non-positive size or an unknown activation.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "tanh",
        time_input: bool = True,
    ):
        super().__init__()

        sizes = _layer_sizes(dim, hidden)
        self.dim = dim
        self.time_columns = 1 if time_input else 0
        self.layers = nn.ModuleList(
            MaskedLinear(n_in + self.time_columns, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.activations = nn.ModuleList(_make_activation(activation) for _ in hidden)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Evaluate the field.

        Args:
            t: time, a 0-d tensor.
            z: state, shape (B, D).

        Returns:
            dz/dt, shape (B, D).
        """
        h = z
        for index, layer in enumerate(self.layers):
            if self.time_columns:
                # Same as layer(cat([t, h])) with t in input column 0, but t enters through the
                # bias instead of a concatenated column: about 10 % faster per training step
                # (scripts/bench_flows.py, 2-64-64-64-2, one thread).
                weight = layer.weight * layer.weight_mask
                bias = weight[:, 0] * t.to(h.dtype)
                if layer.bias is not None:
                    bias = bias + layer.bias
                h = torch.addmm(bias, h, weight[:, 1:].t())
            else:
                h = layer(h)
            if index < len(self.activations):
                h = self.activations[index](h)

        return h

    def prunable_layers(self) -> list[nn.Module]:
        """Return the masked linear layers, input to output."""
        return list(self.layers)


class ConcatSquashLinear(nn.Module):
    """FFJORD's concatsquash layer: linear(x) * sigmoid(hyper_gate(t)) + hyper_bias(t).

    `linear` is the prunable main layer. Output neuron j of the layer owns row j of
    `hyper_gate` (weight and bias) and row j of `hyper_bias`. The layer has
    in_features * out_features + 4 * out_features parameters.

    Args:
        in_features: input width.
        out_features: output width.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()

        self.linear = MaskedLinear(in_features, out_features)
        self.hyper_gate = nn.Linear(1, out_features)
        self.hyper_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Apply the layer to x of shape (B, in_features) at the 0-d time t."""
        time = t.to(dtype=x.dtype, device=x.device).reshape(1, 1)
        gate = torch.sigmoid(self.hyper_gate(time))

        return self.linear(x) * gate + self.hyper_bias(time)


class ConcatSquashField(nn.Module):
    """A vector field built from `ConcatSquashLinear` layers with activations between them.

    Args:
        dim: state dimension D.
        hidden: widths of the hidden layers.
        activation: a key of `ACTIVATIONS`.

    Raises:
        ValueError: on a non-positive size or an unknown activation.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh"):
        super().__init__()

        sizes = _layer_sizes(dim, hidden)
        self.dim = dim
        # Time enters through the hyper-layers, never as an input column of `linear`.
        self.time_columns = 0
        self.layers = nn.ModuleList(
            ConcatSquashLinear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.activations = nn.ModuleList(_make_activation(activation) for _ in hidden)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Evaluate the field at the 0-d time t for z of shape (B, D); return (B, D)."""
        h = z
        for index, layer in enumerate(self.layers):
            h = layer(t, h)
            if index < len(self.activations):
                h = self.activations[index](h)

        return h

    def prunable_layers(self) -> list[nn.Module]:
        """Return the masked main layers (`layer.linear`), input to output."""
        return [layer.linear for layer in self.layers]

    def hyper_layers(self, layer_index: int) -> tuple[nn.Linear, nn.Linear]:
        """Return (hyper_gate, hyper_bias) of layer `layer_index`; row j of each belongs to neuron j."""
        layer = self.layers[layer_index]

        return layer.hyper_gate, layer.hyper_bias


def build_field(
    kind: str,
    dim: int,
    hidden: Sequence[int] = (64, 64, 64),
    activation: str = "tanh",
    time_input: bool = True,
) -> nn.Module:
    """Build a vector field from plain config values.

    Args:
        kind: "mlp" or "concatsquash".
        dim: state dimension D.
        hidden: widths of the hidden layers.
        activation: a key of `ACTIVATIONS`.
        time_input: whether t is an input of the field; concatsquash always takes t.

    Returns:
        An `MLPField` or a `ConcatSquashField`.

    Raises:
        ValueError: on an unknown kind, or on `time_input=False` with concatsquash.
    """
    hidden = tuple(hidden) if isinstance(hidden, Sequence) and not isinstance(hidden, str) else hidden
    if kind == "mlp":
        return MLPField(dim, hidden, activation, time_input)
    if kind == "concatsquash":
        if not time_input:
            raise ValueError(
                "`time_input=False` is invalid with field 'concatsquash', whose hyper-layers always read t; "
                "use field 'mlp' for a field without time input."
            )
        return ConcatSquashField(dim, hidden, activation)

    raise ValueError(f"`field` must be one of {', '.join(FIELD_KINDS)}; got {kind!r}.")
