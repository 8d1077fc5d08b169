"""Mean negative log-likelihood in nats as a torchmetrics Metric, and its bits/dim conversion."""

__all__ = ["NLL", "bits_per_dim"]

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class NLL(Metric):
    """Mean negative log-likelihood in nats over every sample seen since the last reset.

    The states are the float64 sum of the per-sample values and the sample count, both reduced
    by summation across processes, so the mean under DDP equals the mean over the union of all
    processes' samples, whatever the batch sizes were.

    Example:
        >>> metric = NLL()
        >>> metric.update(-model.log_prob(x))  # per-sample values, shape (B,)
        >>> metric.compute()  # 0-d float64 tensor, nats
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)

        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll: Tensor) -> None:
        """Add a batch of per-sample negative log-likelihoods.

        Args:
            nll: `(B,)` per-sample values in nats, for example `-cnf.log_prob(x)`. A non-finite
                value makes the mean non-finite, so a diverged model shows up in the metric.

        Raises:
            TypeError: if `nll` is not a tensor.
            ValueError: if `nll` is not 1-D.
        """
        if not isinstance(nll, Tensor):
            raise TypeError(f"NLL.update expects a Tensor of per-sample values; got {type(nll).__name__}")
        if nll.dim() != 1:
            raise ValueError(
                f"NLL.update expects per-sample values of shape (B,); got shape {tuple(nll.shape)}. "
                "Pass -log_prob(x) before taking the batch mean."
            )

        self.nll_sum += nll.detach().to(torch.float64).sum()
        self.count += nll.numel()

    def compute(self) -> Tensor:
        """Return the mean negative log-likelihood in nats (NaN before any update)."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.nll_sum.device)

        return self.nll_sum / self.count


def bits_per_dim(nll_nats: Tensor | float, dim: int, data_scale: float = 1.0) -> Tensor | float:
    """Convert a negative log-likelihood in nats per sample to bits per dimension.

    For images, the usual convention (FFJORD, Glow, RealNVP) reports the likelihood of the
    dequantized pixels on the scale [0, 256): integer pixel values plus uniform noise in
    [0, 1). A flow trained on those values divided by `data_scale` (256 for data in [0, 1))
    has a density that is larger by `data_scale ** dim`, so the conversion adds
    `dim * log(data_scale)` nats before dividing by `dim * log(2)`:

        bits/dim = (nll_nats + dim * log(data_scale)) / (dim * log(2)).

    Any other preprocessing, such as a logit transform, must already be accounted for in
    `nll_nats` through its log-determinant; this function does not know about it.

    Args:
        nll_nats: negative log-likelihood in nats per sample, a float or a tensor of any shape.
        dim: number of dimensions of one sample (784 for MNIST).
        data_scale: factor the dequantized values in [0, 256) were divided by before the flow
            saw them; 256 for data scaled to [0, 1), 1 for tabular data or already-scaled NLLs.

    Returns:
        Bits per dimension, a float for a float input and a tensor of the same shape otherwise.

    Raises:
        ValueError: if `dim` is not a positive integer or `data_scale` is not positive and finite.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"`dim` must be a positive integer (the sample dimension); got {dim!r}")
    if not math.isfinite(data_scale) or data_scale <= 0:
        raise ValueError(
            f"`data_scale` must be positive and finite (256 for pixels scaled to [0, 1)); got {data_scale!r}"
        )

    return (nll_nats + dim * math.log(data_scale)) / (dim * math.log(2.0))
