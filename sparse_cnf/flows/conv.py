"""Convolutional vector fields for image CNFs: concat and concatsquash convolutions in FFJORD's multiscale layout."""

__all__ = [
    "CONV_FIELD_KINDS",
    "ConcatConv2d",
    "ConcatSquashConv2d",
    "ConvField",
    "build_conv_fields",
    "multiscale_stages",
    "squeeze",
    "unsqueeze",
]

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparse_cnf.flows.fields import ACTIVATIONS
from sparse_cnf.flows.layers import MaskedConv2d

CONV_FIELD_KINDS = ("conv", "conv_concatsquash")
"""Field kinds built here: "conv" (FFJORD's ConcatConv2d, t as an extra input channel) and
"conv_concatsquash" (the concatsquash gate and shift of t around each convolution)."""


def squeeze(x: Tensor, factor: int = 2) -> Tensor:
    """Move each factor x factor block of pixels into channels: (B, C, H, W) -> (B, C f², H/f, W/f).

    Input channel c becomes output channels c f² ... c f² + f² - 1, with the pixel at offset
    (i, j) inside a block in channel c f² + i f + j (the order of FFJORD's SqueezeLayer). The
    map is a permutation of the entries, so its log-determinant is 0.

    Raises:
        ValueError: if H or W is not divisible by `factor`.
    """
    batch, channels, height, width = x.shape
    if height % factor or width % factor:
        raise ValueError(f"squeeze needs H and W divisible by {factor}; got an image of {height} x {width}.")
    x = x.reshape(batch, channels, height // factor, factor, width // factor, factor)

    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels * factor**2, height // factor, width // factor)


def unsqueeze(x: Tensor, factor: int = 2) -> Tensor:
    """Invert `squeeze`: (B, C f², H, W) -> (B, C, H f, W f)."""
    batch, channels, height, width = x.shape
    if channels % factor**2:
        raise ValueError(f"unsqueeze needs a channel count divisible by {factor**2}; got {channels}.")
    x = x.reshape(batch, channels // factor**2, factor, factor, height, width)

    return x.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels // factor**2, height * factor, width * factor)


class ConcatConv2d(nn.Module):
    """FFJORD's ConcatConv2d: a convolution of t, given as input channel 0, and x.

    `conv` is the prunable main layer with in_channels + 1 input channels. Channel 0 of its
    weight reads t, so its hidden channel j is input channel j + 1 of the next layer.

    Args:
        in_channels: channels of x.
        out_channels: output channels.
        kernel_size: square kernel size; the padding keeps H and W.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()

        self.conv = MaskedConv2d(in_channels + 1, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Apply the layer to x of shape (B, C, H, W) at the 0-d time t."""
        time = t.to(dtype=x.dtype, device=x.device).expand(x.shape[0], 1, *x.shape[2:])

        return self.conv(torch.cat([time, x], dim=1))


class ConcatSquashConv2d(nn.Module):
    """Concatsquash for convolutions: conv(x) * sigmoid(hyper_gate(t)) + hyper_bias(t), per channel.

    `conv` is the prunable main layer. Output channel j owns row j of `hyper_gate` (weight and
    bias) and row j of `hyper_bias`.

    Args:
        in_channels: channels of x.
        out_channels: output channels.
        kernel_size: square kernel size; the padding keeps H and W.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()

        self.conv = MaskedConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.hyper_gate = nn.Linear(1, out_channels)
        self.hyper_bias = nn.Linear(1, out_channels, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Apply the layer to x of shape (B, C, H, W) at the 0-d time t."""
        time = t.to(dtype=x.dtype, device=x.device).reshape(1, 1)
        gate = torch.sigmoid(self.hyper_gate(time)).reshape(1, -1, 1, 1)

        return self.conv(x) * gate + self.hyper_bias(time).reshape(1, -1, 1, 1)


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(image_shape) if isinstance(image_shape, Sequence) and not isinstance(image_shape, str) else None
    if shape is None or len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"`image_shape` must be three positive ints (C, H, W) such as (1, 28, 28); got {image_shape!r}.")

    return shape


class ConvField(nn.Module):
    """A convolutional vector field f(t, z) on flattened images, acting on one stage of a multiscale flow.

    The state z of shape (B, D), D = C H W, is viewed as the image (B, C, H, W) and squeezed
    `squeezes` times. The network moves the first `active_channels` channels of that tensor,
    and every other entry gets zero velocity. These are the dimensions that FFJORD's
    multiscale model has factored out before this stage: they stay fixed, so the divergence
    only sums over the active channels. Keeping the full state in every block lets the
    multiscale model run as a plain stack of `CNFBlock`s on (B, D).

    The network is a chain of 3 x 3 convolutions with `hidden` channels and the activation
    between them, as FFJORD's ODEnet with stride 1. The masked convolutions are the prunable
    layers. Hidden channel j of layer l is input channel j + `time_columns` of layer l + 1.

    Args:
        image_shape: (C, H, W) of the data.
        squeezes: number of `squeeze` steps before the network.
        active_channels: leading channels of the squeezed tensor that the field moves.
        hidden: channels of the hidden layers, for example (64, 64, 64).
        activation: a key of `sparse_cnf.flows.fields.ACTIVATIONS`.
        layer: "concat" (t as input channel 0) or "concatsquash".

    Raises:
        ValueError: on an invalid shape, a squeeze that does not divide H or W, an
            `active_channels` outside [1, channels after the squeezes], a non-positive
            hidden width, or an unknown activation or layer.

    References:
        FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
        W. Grathwohl et al., 2019, arXiv:1810.01367.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        squeezes: int = 0,
        active_channels: int | None = None,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "softplus",
        layer: str = "concat",
    ):
        super().__init__()

        channels, height, width = _check_image_shape(image_shape)
        scale = 2**squeezes
        if height % scale or width % scale:
            raise ValueError(f"{squeezes} squeezes need H and W divisible by {scale}; got an image of {height} x {width}.")
        squeezed_channels = channels * scale**2
        active_channels = squeezed_channels if active_channels is None else active_channels
        if not 1 <= active_channels <= squeezed_channels:
            raise ValueError(f"`active_channels` must lie in [1, {squeezed_channels}]; got {active_channels}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {', '.join(ACTIVATIONS)}; got {activation!r}.")
        if layer not in ("concat", "concatsquash"):
            raise ValueError(f"`layer` must be 'concat' or 'concatsquash'; got {layer!r}.")
        for size in hidden:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"`hidden` must contain positive ints only; got {list(hidden)!r}.")

        self.image_shape = (channels, height, width)
        self.dim = channels * height * width
        self.squeezes = squeezes
        self.active_channels = active_channels
        self.time_columns = 1 if layer == "concat" else 0
        layer_class = ConcatConv2d if layer == "concat" else ConcatSquashConv2d
        sizes = [active_channels, *hidden, active_channels]
        self.layers = nn.ModuleList(layer_class(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.activations = nn.ModuleList(ACTIVATIONS[activation]() for _ in hidden)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        """Evaluate the field at the 0-d time t for z of shape (B, D); return dz/dt of shape (B, D)."""
        x = z.reshape(z.shape[0], *self.image_shape)
        for _ in range(self.squeezes):
            x = squeeze(x)

        h = x[:, : self.active_channels]
        for index, layer in enumerate(self.layers):
            h = layer(t, h)
            if index < len(self.activations):
                h = self.activations[index](h)

        # Factored-out channels do not move.
        rest = x.shape[1] - self.active_channels
        if rest:
            h = torch.cat([h, h.new_zeros(h.shape[0], rest, *h.shape[2:])], dim=1)
        for _ in range(self.squeezes):
            h = unsqueeze(h)

        return h.reshape(z.shape[0], self.dim)

    def prunable_layers(self) -> list[nn.Module]:
        """Return the masked convolutions (`layer.conv`), input to output."""
        return [layer.conv for layer in self.layers]

    def hyper_layers(self, layer_index: int) -> tuple[nn.Module, ...]:
        """Return (hyper_gate, hyper_bias) of a concatsquash layer, or () for a concat layer."""
        layer = self.layers[layer_index]
        if isinstance(layer, ConcatSquashConv2d):
            return layer.hyper_gate, layer.hyper_bias

        return ()


def _default_num_scales(height: int, width: int) -> int:
    # FFJORD's ODENVP counts one scale per halving while both sides are still >= 4.
    count = 0
    while height >= 4 and width >= 4:
        count += 1
        height, width = height // 2, width // 2

    return count


def multiscale_stages(image_shape: Sequence[int], num_scales: int | None = None) -> list[tuple[int, int]]:
    """List the stages of FFJORD's multiscale layout as (squeezes, active channels).

    Every scale but the last has a stage on its input and a stage after one more squeeze,
    then factors out half of the channels. The last scale has a single stage. For MNIST
    (1, 28, 28) with 3 scales the stages are (0, 1), (1, 4), (1, 2), (2, 8) and (2, 4). Their
    active images are 1 x 28 x 28, 4 x 14 x 14, 2 x 14 x 14, 8 x 7 x 7 and 4 x 7 x 7.

    Args:
        image_shape: (C, H, W) of the data.
        num_scales: number of scales; None takes FFJORD's rule (one per halving while H and
            W are >= 4). 1 gives a single-scale model on the whole image.

    Returns:
        The stages, from data to base.

    Raises:
        ValueError: on an invalid shape or scale count, or when a squeeze would not divide
            H or W.
    """
    channels, height, width = _check_image_shape(image_shape)
    if num_scales is None:
        num_scales = max(1, _default_num_scales(height, width))
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
        raise ValueError(f"`num_scales` must be a positive int or None; got {num_scales!r}.")
    scale = 2 ** (num_scales - 1)
    if height % scale or width % scale:
        raise ValueError(
            f"{num_scales} scales squeeze the image {num_scales - 1} times, so H and W must be divisible by "
            f"{scale}; got {height} x {width}. Lower `num_scales`."
        )

    stages = []
    active = channels
    for level in range(num_scales):
        stages.append((level, active))
        if level < num_scales - 1:
            stages.append((level + 1, 4 * active))
            active = 2 * active

    return stages


def build_conv_fields(
    kind: str,
    dim: int,
    image_shape: Sequence[int] | None,
    hidden: Sequence[int] = (64, 64, 64),
    activation: str = "softplus",
    time_input: bool = True,
    num_blocks: int = 2,
    num_scales: int | None = None,
) -> list[ConvField]:
    """Build the fields of a multiscale image CNF, `num_blocks` per stage, from data to base.

    Args:
        kind: "conv" or "conv_concatsquash".
        dim: state dimension D; must equal C H W.
        image_shape: (C, H, W) of the data.
        hidden: channels of the hidden layers of every field.
        activation: a key of `ACTIVATIONS`.
        time_input: must be True, because both layer kinds read t.
        num_blocks: blocks per stage (FFJORD's n_blocks).
        num_scales: see `multiscale_stages`.

    Returns:
        One field per CNF block: len(multiscale_stages(...)) * num_blocks fields.

    Raises:
        ValueError: on an unknown kind, a missing or mismatched image shape, `time_input=False`,
            or any invalid value of `ConvField` or `multiscale_stages`.
    """
    if kind not in CONV_FIELD_KINDS:
        raise ValueError(f"conv field kind must be one of {', '.join(CONV_FIELD_KINDS)}; got {kind!r}.")
    if image_shape is None:
        raise ValueError(f"field {kind!r} needs `image_shape` (C, H, W), for example [1, 28, 28] for MNIST.")
    shape = _check_image_shape(image_shape)
    if math.prod(shape) != dim:
        raise ValueError(
            f"`image_shape` {list(shape)} has {math.prod(shape)} entries but the data dimension is {dim}; "
            "serve flattened images (for MNIST, dataset.flatten=true) of that shape."
        )
    if not time_input:
        raise ValueError(f"`time_input=False` is invalid with field {kind!r}, whose layers always read t.")
    layer = "concat" if kind == "conv" else "concatsquash"
    hidden = tuple(hidden)

    # NOTE: FFJORD's multiscale MNIST model starts with a fixed logit transform (alpha 1e-6)
    # whose log-determinant enters the NLL. No such layer exists here: the blocks act on the
    # dequantized pixels in [0, 1) directly, so the model differs from FFJORD's in that layer.

    return [
        ConvField(shape, squeezes, active, hidden, activation, layer)
        for squeezes, active in multiscale_stages(shape, num_scales)
        for _ in range(num_blocks)
    ]
