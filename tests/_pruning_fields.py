"""Small fields with masked layers for the pruning tests: plain, time-concatenated and concatsquash."""

__all__ = ["SquashField", "TimeMLP", "TwoFields", "sequential_field"]

import torch
from torch import Tensor, nn

from sparse_cnf.flows.layers import MaskedLinear


def sequential_field(sizes: tuple[int, ...] = (3, 16, 16, 3)) -> nn.Sequential:
    """Return Sequential(MaskedLinear, Tanh, ..., MaskedLinear) with the given layer sizes."""
    modules: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        modules.append(MaskedLinear(n_in, n_out))
        if index < len(sizes) - 2:
            modules.append(nn.Tanh())

    return nn.Sequential(*modules)


class TimeMLP(nn.Module):
    """An MLP f(t, z) whose every layer reads t as input column 0."""

    time_columns = 1

    def __init__(self, dim: int = 2, hidden: tuple[int, ...] = (8, 8)):
        super().__init__()

        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(MaskedLinear(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        for index, layer in enumerate(self.layers):
            h = layer(torch.cat([t.reshape(1, 1).expand(h.shape[0], 1).to(h), h], dim=1))
            if index < len(self.layers) - 1:
                h = torch.tanh(h)

        return h

    def prunable_layers(self) -> list[nn.Module]:
        return list(self.layers)


class SquashLayer(nn.Module):
    """A concatsquash layer: linear(x) * sigmoid(hyper_gate(t)) + hyper_bias(t)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()

        self.linear = MaskedLinear(n_in, n_out)
        self.hyper_gate = nn.Linear(1, n_out)
        self.hyper_bias = nn.Linear(1, n_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        time = t.reshape(1, 1).to(x)

        return self.linear(x) * torch.sigmoid(self.hyper_gate(time)) + self.hyper_bias(time)


class SquashField(nn.Module):
    """Concatsquash layers with tanh between them; hyper-layers are found as siblings of `linear`."""

    time_columns = 0

    def __init__(self, dim: int = 2, hidden: tuple[int, ...] = (8, 8)):
        super().__init__()

        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(SquashLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        for index, layer in enumerate(self.layers):
            h = layer(t, h)
            if index < len(self.layers) - 1:
                h = torch.tanh(h)

        return h

    def prunable_layers(self) -> list[nn.Module]:
        return [layer.linear for layer in self.layers]


class TwoFields(nn.Module):
    """Two fields and a scalar parameter, like a CNF with two blocks and a learnable end time."""

    def __init__(self, dim: int = 2, hidden: tuple[int, ...] = (8, 8)):
        super().__init__()

        self.first = TimeMLP(dim, hidden)
        self.second = SquashField(dim, hidden)
        self.T = nn.Parameter(torch.tensor(1.0))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.T * self.second(t, self.first(t, z))
