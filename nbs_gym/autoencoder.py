"""The convolutional autoencoder trained inside each episode, and its per-pixel loss maps.

The network is fully convolutional, so the model trained on patches also maps whole images to
whole reconstructions: a loss map is the per-pixel squared error of an image, averaged over
channels. Initialisation draws only from a ``torch.Generator`` so that an episode's seed fixes it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nbs_gym.config import AutoencoderConfig


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"`` into ``cuda`` when a GPU is visible, else ``cpu``; check that cuda exists."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for, but torch sees no CUDA device")
    return resolved


def snapshot_chunk(device: torch.device) -> int:
    """Images per forward pass when taking loss maps of whole images.

    On a CPU, activations of a few images stay in cache: 16 images per pass took about half the time of
    one pass over all 130 default images. A GPU wants large batches.
    """
    return 256 if device.type == "cuda" else 16


def memory_format(device: torch.device) -> torch.memory_format:
    """Layout of the autoencoder's weights and activations on ``device``.

    On the CPU, oneDNN's convolutions run on channels-last (NHWC) tensors without reordering them: a
    snapshot of the 130 default images took a third of the time it takes in the default NCHW layout,
    with the same numbers to float rounding. On a GPU the default layout is kept.
    """
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


_GroupedWeights = dict[str, tuple[torch.Tensor, torch.Tensor, int]]


def _layers(model: ConvAutoencoder) -> list[tuple[str, nn.Module]]:
    """The model's layers in order, each with the name prefix of its parameters."""
    parts = ("encoder", "decoder")
    return [(f"{part}.{index}", layer) for part in parts for index, layer in enumerate(getattr(model, part))]


def _to_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``x`` in ``layout``, with strides that say so even for one channel.

    A one-channel tensor is both NCHW- and NHWC-contiguous, and ``contiguous(memory_format=...)`` keeps
    its NCHW strides; convolutions then return NCHW, and the next channels-last layer copies their output.
    """
    if x.shape[1] == 1 and layout == torch.channels_last:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout).copy_(x)
    return x.contiguous(memory_format=layout)


@functools.cache
def fused_cpu_ops() -> bool:
    """Whether oneDNN's fused convolution-plus-activation ops run here and agree with the plain ones.

    They are PyTorch's internal CPU kernels for a convolution followed by an activation in one pass
    (``torch.ops.mkldnn._convolution_pointwise`` and its transposed twin, which ``torch.compile`` uses
    on the CPU). Loss maps use them because each activation is then written once instead of twice
    (the timings are in docs/PERFORMANCE.md). Being
    internal, they are checked once on a small input; where they are missing or disagree, loss maps
    use the plain calls.
    """
    try:
        generator = torch.Generator().manual_seed(0)
        x = _to_layout(torch.rand(2, 4, 8, 8, generator=generator), torch.channels_last)
        weight = (torch.rand(4, 2, 4, 4, generator=generator) - 0.5).contiguous(memory_format=torch.channels_last)
        bias = torch.rand(4, generator=generator)
        fused = [
            torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, [1, 1], [2, 2], [1, 1], 2, "leaky_relu", [0.2], None
            ),
            torch.ops.mkldnn._convolution_transpose_pointwise(
                x, weight, bias, [1, 1], [0, 0], [2, 2], [1, 1], 2, "leaky_relu", [0.2], None
            ),
        ]
        plain = [
            F.leaky_relu(F.conv2d(x, weight, bias, 2, 1, groups=2), 0.2),
            F.leaky_relu(F.conv_transpose2d(x, weight, bias, 2, 1, groups=2), 0.2),
        ]
        return all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(fused, plain, strict=True))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _grouped_weights(
    layers: list[tuple[str, nn.Module]], params: dict[str, torch.Tensor], layout: torch.memory_format, inference: bool
) -> _GroupedWeights:
    """Each convolution's weights of G stacked models (``params[name]`` is (G, *shape)) as one grouped call's.

    For inference in channels-last, the output convolution (C_in channels to the image's C_out) becomes a
    depthwise convolution with C_out outputs per input channel, summed over the input channels by
    :func:`_grouped_forward`: oneDNN runs a dense convolution with one output channel slowly, and at
    full resolution it is the most expensive layer of a snapshot (docs/PERFORMANCE.md).
    """
    weights = {}
    output_layer = [name for name, layer in layers if isinstance(layer, nn.Conv2d)][-1]
    for name, layer in layers:
        if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
        groups = len(weight)
        if inference and layout == torch.channels_last and name == output_layer:
            # (G, C_out, C_in, k, k) -> (G * C_in * C_out, 1, k, k): each input channel with its C_out kernels
            groups *= weight.shape[2]
            weight = weight.transpose(1, 2).flatten(0, 2).unsqueeze(1)
        else:
            weight = weight.flatten(0, 1)
        weights[name] = (weight.contiguous(memory_format=layout), bias.flatten(), groups)
    return weights


def _grouped_forward(
    x: torch.Tensor, layers: list[tuple[str, nn.Module]], weights: _GroupedWeights, fused: bool = False
) -> torch.Tensor:
    """The autoencoder's layers, each as one grouped call over the stacked models' channels.

    With ``fused`` (inference on the CPU in channels-last, where :func:`fused_cpu_ops`), each
    convolution and the leaky ReLU after it run as one oneDNN call.
    """
    index = 0
    while index < len(layers):
        name, layer = layers[index]
        index += 1
        if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            x = layer(x)
            continue
        weight, bias, groups = weights[name]
        models = len(bias) // layer.out_channels
        depthwise = groups != models  # the depthwise form of the output convolution (groups = models * C_in)
        conv_bias = None if depthwise else bias
        if fused:
            following = layers[index][1] if index < len(layers) else None
            activation, scalars = "none", []
            if isinstance(following, nn.LeakyReLU):
                activation, scalars = "leaky_relu", [following.negative_slope]
                index += 1
            if isinstance(layer, nn.ConvTranspose2d):
                op, geometry = torch.ops.mkldnn._convolution_transpose_pointwise, [layer.padding, layer.output_padding]
            else:
                op, geometry = torch.ops.mkldnn._convolution_pointwise, [layer.padding]
            x = op(x, weight, conv_bias, *geometry, layer.stride, layer.dilation, groups, activation, scalars, None)
        elif isinstance(layer, nn.ConvTranspose2d):
            padding = cast("tuple[int, ...]", layer.padding)  # a transposed convolution's padding is never a string
            x = F.conv_transpose2d(x, weight, bias, layer.stride, padding, layer.output_padding, groups)
        else:
            x = F.conv2d(x, weight, conv_bias, layer.stride, layer.padding, groups=groups)
        if depthwise:
            summed = x.unflatten(1, (models, layer.in_channels, layer.out_channels)).sum(dim=2)
            x = summed.flatten(1, 2) + bias.view(1, -1, 1, 1)
    return x


def _grouped_loss_maps(
    images: torch.Tensor,
    layers: list[tuple[str, nn.Module]],
    weights: _GroupedWeights,
    models: int,
    layout: torch.memory_format,
    chunk: int,
) -> torch.Tensor:
    """Loss maps of ``images`` (M, C, H, W) under ``models`` stacked models, ``chunk`` images per pass.

    Returns:
        Shape (models, M, H, W): each model's squared error averaged over the image channels.
    """
    fused = layout == torch.channels_last and images.device.type == "cpu" and fused_cpu_ops()
    maps = torch.empty((models, len(images), *images.shape[2:]), device=images.device)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        part = _to_layout(part.repeat(1, models, 1, 1) if models > 1 else part, layout)
        error = (_grouped_forward(part, layers, weights, fused) - part).square()
        # (m, models * C, H, W) -> (models, m, H, W), the mean over each model's channels
        maps[:, start : start + chunk] = error.unflatten(1, (models, images.shape[1])).mean(dim=2).transpose(0, 1)
    return maps


class ConvAutoencoder(nn.Module):
    """Stride-2 convolutional encoder and transposed-convolution decoder with a narrow bottleneck.

    The leaky ReLUs work in place: their gradient is the same, and one update of 16 models in the
    batched engine took about 0.9 of the time on the CPU.

    Args:
        channels: Image channels (1 or 3).
        width: Channels of the first encoder level, doubled at each further level.
        depth: Number of stride-2 levels.
        latent_channels: Channels of the bottleneck.
    """

    def __init__(self, channels: int, width: int = 16, depth: int = 2, latent_channels: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth)]
        encoder: list[nn.Module] = []
        c_in = channels
        for w in widths:
            encoder += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = w
        encoder.append(nn.Conv2d(c_in, latent_channels, 1))
        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, c_in, 1), nn.LeakyReLU(0.2, inplace=True)]
        for w in [*reversed(widths[:-1]), widths[0]]:
            decoder += [nn.ConvTranspose2d(c_in, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = w
        decoder += [nn.Conv2d(c_in, channels, 3, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every layer as PyTorch's default does, but drawing from ``generator``."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                weight = torch.empty(module.weight.shape)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1.0 / math.sqrt(fan_in)
                assert module.bias is not None  # every layer of the autoencoder has a bias
                bias = torch.empty(module.bias.shape).uniform_(-bound, bound, generator=generator)
                module.weight.copy_(weight)
                module.bias.copy_(bias)


class AutoencoderTrainer:
    """One autoencoder with its Adam optimiser: updates on patch batches, loss maps of images.

    The N = 1 case of :class:`BatchedAutoencoderTrainer`, whose Adam it uses (the package has one), with
    the batch axis of the models dropped.

    Args:
        channels: Image channels.
        config: Architecture, learning rate and device.
    """

    def __init__(self, channels: int, config: AutoencoderConfig) -> None:
        self.config = config
        self.batched = BatchedAutoencoderTrainer(1, channels, config)
        self.device = self.batched.device

    def reset(self, generator: torch.Generator) -> None:
        """Fresh weights drawn from ``generator`` and a fresh optimiser state."""
        self.batched.reset([0], [generator])

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The model's parameters by name (views, no copies), as ``ConvAutoencoder.named_parameters``."""
        return {name: value[0] for name, value in self.batched.params.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's parameters as a ``ConvAutoencoder`` state dict (copies)."""
        return self.batched.state_dict(0)

    def update(self, patches: torch.Tensor) -> torch.Tensor:
        """One Adam step on the mean squared error of ``patches`` (B, C, p, p).

        Returns:
            The per-patch mean squared error before the step, shape (B,), detached.
        """
        return self.batched.update(patches[None])[0]

    def loss_maps(self, images: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Per-pixel squared reconstruction error of whole ``images`` (N, C, H, W), averaged over channels.

        Args:
            images: The images, on the model's device.
            chunk: Images per forward pass; default :func:`snapshot_chunk` of the device.

        Returns:
            Loss maps of shape (N, H, W) on the model's device.
        """
        return self.batched.loss_maps(images, chunk)[0]


class BatchedAutoencoderTrainer:
    """N independent autoencoders trained as one batched computation on the device.

    The N models' parameters are stacked along a leading axis (``params[name][i]`` is model ``i``'s),
    and each layer of all N runs as one grouped convolution: the batch of patches is laid out as
    ``(B, N * C, p, p)`` and layer weights as ``(N * C_out, C_in, k, k)`` with ``groups=N``, so one
    update of all N costs one call of each layer instead of N. Each model has its own initialisation,
    its own Adam state (moments and step count) and its own data. Adam is computed as ``torch.optim.Adam``
    computes it; a model's numbers are those of the same model trained alone (N = 1, as
    :class:`AutoencoderTrainer`) up to float rounding of the grouped kernels.

    Loss maps of the shared snapshot images go through ``models_per_pass`` models at a time (the images
    repeated along channels for each). On a GPU that is all N in one pass. On a CPU it is one: oneDNN's
    grouped convolutions with few channels per group ran slower per model than one model's dense ones,
    and the update, not the snapshot, is where batching removes per-call overhead there.

    Args:
        n_models: Number of autoencoders N.
        channels: Image channels.
        config: Architecture, learning rate and device (shared by all N).
        models_per_pass: Models per forward pass when taking loss maps; default 1 on a CPU, N on a GPU.
    """

    _BETAS = (0.9, 0.999)
    _EPS = 1e-8

    def __init__(
        self, n_models: int, channels: int, config: AutoencoderConfig, models_per_pass: int | None = None
    ) -> None:
        if n_models < 1:
            raise ValueError(f"n_models: must be >= 1, got {n_models}")
        self.n_models = n_models
        self.channels = channels
        self.config = config
        self.device = resolve_device(config.device)
        self._format = memory_format(self.device)
        if models_per_pass is not None and models_per_pass < 1:
            raise ValueError(f"models_per_pass: must be >= 1, got {models_per_pass}")
        default_per_pass = n_models if self.device.type == "cuda" else 1
        self.models_per_pass = min(n_models, models_per_pass or default_per_pass)
        # The template draws initial weights on the CPU (ConvAutoencoder.reset_parameters) and supplies the
        # architecture: its layers, in order, with their strides and paddings.
        self._template = ConvAutoencoder(channels, config.width, config.depth, config.latent_channels)
        self._layers = _layers(self._template)
        # All parameters of model i live in row i of one (N, P) tensor, so that Adam is a handful of
        # elementwise operations on three tensors rather than a handful per parameter.
        self._shapes = {name: p.shape for name, p in self._template.named_parameters()}
        self._flat = torch.zeros(
            (n_models, sum(shape.numel() for shape in self._shapes.values())), device=self.device, requires_grad=True
        )
        self._exp_avg = torch.zeros_like(self._flat)
        self._exp_avg_sq = torch.zeros_like(self._flat)
        self._steps = torch.zeros(n_models, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def reset(self, slots: list[int], generators: list[torch.Generator]) -> None:
        """Fresh weights for the models in ``slots``, each drawn from its generator; fresh Adam state."""
        for slot, generator in zip(slots, generators, strict=True):
            self._template.reset_parameters(generator)
            values = [value.flatten() for value in self._template.parameters()]
            self._flat[slot].copy_(torch.cat(values))
            self._exp_avg[slot].zero_()
            self._exp_avg_sq[slot].zero_()
            self._steps[slot] = 0

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """Each parameter of all N models, stacked: ``params[name][i]`` is model ``i``'s (views, no copies)."""
        return self._views(self._flat)

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        views, offset = {}, 0
        for name, shape in self._shapes.items():
            views[name] = flat[:, offset : offset + shape.numel()].view(len(flat), *shape)
            offset += shape.numel()
        return views

    @torch.enable_grad()
    def update(self, patches: torch.Tensor) -> torch.Tensor:
        """One Adam step of every model on its own batch; ``patches`` is (N, B, C, p, p).

        Returns:
            The per-patch mean squared error before the step, shape (N, B), detached.
        """
        per_patch, grad = self._losses_and_gradient(patches)
        self._adam_step(grad)
        return per_patch

    @torch.enable_grad()
    def gradients(self, patches: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """What :meth:`update` computes before its Adam step, without the step: the per-patch losses
        (N, B) and each model's gradient of its mean loss, by parameter name (``grads[name][i]``)."""
        per_patch, grad = self._losses_and_gradient(patches)
        return per_patch, self._views(grad)

    def _losses_and_gradient(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, batch, channels = patches.shape[:3]
        if n != self.n_models or channels != self.channels:
            raise ValueError(
                f"patches: expected shape ({self.n_models}, B, {self.channels}, p, p), got {tuple(patches.shape)}"
            )
        stacked = patches.transpose(0, 1).reshape(batch, n * channels, *patches.shape[3:])
        stacked = _to_layout(stacked, self._format)
        weights = _grouped_weights(self._layers, self._views(self._flat), self._format, inference=False)
        reconstruction = _grouped_forward(stacked, self._layers, weights)
        per_patch = (reconstruction - stacked).square().unflatten(1, (n, channels)).mean(dim=(2, 3, 4)).T
        # Summing the N mean losses gives each model exactly the gradient of its own loss.
        (grad,) = torch.autograd.grad(per_patch.mean(dim=1).sum(), [self._flat])
        return per_patch.detach(), grad

    def state_dict(self, model: int) -> dict[str, torch.Tensor]:
        """Model ``model``'s parameters as a ``ConvAutoencoder`` state dict (copies)."""
        return {name: value[model].detach().clone() for name, value in self.params.items()}

    @torch.no_grad()
    def loss_maps(
        self, images: torch.Tensor, chunk: int | None = None, models: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Loss maps of the same ``images`` (M, C, H, W) under every model: shape (N, M, H, W).

        Args:
            images: The images, on the engine's device.
            chunk: Images per pass through ``models_per_pass`` models; by default :func:`snapshot_chunk`
                of the device divided among those models.
            models: Only these models, in this order (shape (len(models), M, H, W)); default all N.
        """
        selected = list(range(self.n_models)) if models is None else [int(model) for model in models]
        if any(not 0 <= model < self.n_models for model in selected):
            raise ValueError(f"models: expected indices in [0, {self.n_models}), got {selected}")
        per_pass = self.models_per_pass
        chunk = chunk or max(1, snapshot_chunk(self.device) // per_pass)
        maps = torch.empty((len(selected), len(images), *images.shape[2:]), device=self.device)
        for first in range(0, len(selected), per_pass):
            block = selected[first : first + per_pass]
            rows = slice(first, first + len(block))
            params = self._views(self._flat.detach()[block])
            weights = _grouped_weights(self._layers, params, self._format, inference=True)
            maps[rows] = _grouped_loss_maps(images, self._layers, weights, len(block), self._format, chunk)
        return maps

    @torch.no_grad()
    def _adam_step(self, grad: torch.Tensor) -> None:
        """Adam as ``torch.optim.Adam`` computes it, on the (N, P) parameters, with a step count per model."""
        beta1, beta2 = self._BETAS
        self._steps += 1
        step_size = (self.config.learning_rate / (1 - beta1**self._steps)).float()[:, None]
        bias_correction2_sqrt = ((1 - beta2**self._steps) ** 0.5).float()[:, None]
        self._exp_avg.lerp_(grad, 1 - beta1)
        self._exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self._exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self._EPS)
        self._flat.sub_(step_size * self._exp_avg / denom)
