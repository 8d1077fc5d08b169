"""Linear and convolution layers whose weight carries a fixed 0/1 mask buffer."""

__all__ = ["MaskedConv2d", "MaskedLinear", "is_masked"]

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# NOTE: torch.nn.utils.prune is not used for the masks. Its re-parametrization replaces `weight`
# by `weight_orig` times a mask at forward time, so a fresh model loads no pruned state dict.
# The parameter order also changes when pruning starts, which breaks optimizer state on resume,
# and `copy.deepcopy` fails after a forward pass with gradients. A mask buffer that always
# exists (all ones until pruned) keeps keys, parameter order, copying and pickling unchanged.


class MaskedLinear(nn.Linear):
    """An `nn.Linear` that multiplies its weight by the buffer `weight_mask` in every forward.

    Masked entries get zero gradient. Pruning code writes the mask in place and zeroes the
    masked weights, so the state-dict keys (`weight`, `bias`, `weight_mask`) never change.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.weight_mask, self.bias)


class MaskedConv2d(nn.Conv2d):
    """An `nn.Conv2d` that multiplies its weight by the buffer `weight_mask` in every forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)


def is_masked(module: nn.Module) -> bool:
    """Return whether `module` is a layer with a `weight_mask` buffer."""
    return isinstance(module, (MaskedLinear, MaskedConv2d))
