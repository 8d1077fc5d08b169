"""Divergence Tr(df/dz) of a vector field: exact, or Hutchinson's unbiased estimate."""

__all__ = ["NOISE_KINDS", "divergence_exact", "divergence_hutchinson", "sample_noise"]

import torch
from torch import Tensor

NOISE_KINDS = ("gaussian", "rademacher")


def _check_pair(dz: Tensor, z: Tensor) -> None:
    if dz.shape != z.shape or dz.dim() != 2:
        raise ValueError(f"`dz` and `z` must both have shape (B, D); got {tuple(dz.shape)} and {tuple(z.shape)}.")
    if not z.requires_grad:
        raise ValueError("`z` must require grad and `dz` must be computed from it inside torch.enable_grad().")


def divergence_exact(dz: Tensor, z: Tensor, create_graph: bool = True) -> Tensor:
    """Compute the exact divergence sum_i d(dz_i)/d(z_i) with one vector-Jacobian product per dimension.

    Args:
        dz: field output f(z), shape (B, D), computed from `z` with autograd recording.
        z: field input, shape (B, D), requiring grad.
        create_graph: keep the graph of the result, needed to differentiate it further
            (training); pass False for evaluation only.

    Returns:
        The divergence per sample, shape (B,).

    Raises:
        ValueError: if the shapes differ or `z` does not require grad.
    """
    _check_pair(dz, z)

    # One VJP with e_i per dimension: D backward passes in a Python loop. Measured on 2 CPU
    # cores (torch 2.13, float32, batch 1000, median time of field + divergence + backward),
    # the loop beat one call of torch.autograd.grad(..., is_grads_batched=True) at both sizes:
    #   D=2,  MLP 2-64-64-64-2 tanh:                  loop 2.5-2.7 ms, batched 2.8-3.3 ms;
    #   D=43, concatsquash 43-860-860-43 softplus:    loop 1.37 s,     batched 4.5-5.4 s.
    # The batched call runs the backward under vmap and carries a (D, B, D) Jacobian.
    if not dz.requires_grad:
        return dz.new_zeros(dz.shape[0])
    columns = []
    for i in range(z.shape[1]):
        (grad_i,) = torch.autograd.grad(
            dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True, allow_unused=True
        )
        columns.append(dz.new_zeros(dz.shape[0]) if grad_i is None else grad_i[:, i])

    return torch.stack(columns, dim=1).sum(dim=1)


def divergence_hutchinson(dz: Tensor, z: Tensor, noise: Tensor, create_graph: bool = True) -> Tensor:
    """Estimate the divergence as e^T (df/dz) e with one vector-Jacobian product.

    The estimate is unbiased when the noise has zero mean and identity covariance
    (`sample_noise` draws such noise).

    Args:
        dz: field output f(z), shape (B, D), computed from `z` with autograd recording.
        z: field input, shape (B, D), requiring grad.
        noise: probe vectors e, shape (B, D).
        create_graph: keep the graph of the result, needed to differentiate it further.

    Returns:
        The estimate per sample, shape (B,).

    Raises:
        ValueError: if the shapes differ or `z` does not require grad.

    References:
        A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
        Splines, M. F. Hutchinson, 1989, Communications in Statistics - Simulation and
        Computation 18(3). Used for CNFs in FFJORD, W. Grathwohl et al., 2019, arXiv:1810.01367.
    """
    _check_pair(dz, z)
    if noise.shape != z.shape:
        raise ValueError(f"`noise` must have the shape of `z`, {tuple(z.shape)}; got {tuple(noise.shape)}.")

    if not dz.requires_grad:
        return dz.new_zeros(dz.shape[0])
    (noise_jacobian,) = torch.autograd.grad(
        dz, z, noise, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    if noise_jacobian is None:
        return dz.new_zeros(dz.shape[0])

    return (noise_jacobian * noise).sum(dim=1)


def sample_noise(like: Tensor, kind: str = "gaussian", generator: torch.Generator | None = None) -> Tensor:
    """Draw Hutchinson probe vectors with zero mean and identity covariance.

    Args:
        like: tensor whose shape, dtype and device the noise takes.
        kind: "gaussian" (standard normal) or "rademacher" (+1 or -1 with equal probability).
        generator: random number generator; the global one when None.

    Returns:
        Noise with the shape, dtype and device of `like`.

    Raises:
        ValueError: on an unknown kind.
    """
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)

    raise ValueError(f"`noise` must be one of {', '.join(NOISE_KINDS)}; got {kind!r}.")
