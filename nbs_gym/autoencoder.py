"""The convolutional autoencoder trained inside each episode, and its per-pixel loss maps.

The network is fully convolutional, so the model trained on patches also maps whole images to
whole reconstructions: a loss map is the per-pixel squared error of an image, averaged over
channels. Initialisation draws only from a ``torch.Generator`` so that an episode's seed fixes it.
"""

from __future__ import annotations

import math

import torch
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


class ConvAutoencoder(nn.Module):
    """Stride-2 convolutional encoder and transposed-convolution decoder with a narrow bottleneck.

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
            encoder += [nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = w
        encoder.append(nn.Conv2d(c_in, latent_channels, 1))
        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, c_in, 1), nn.LeakyReLU(0.2)]
        for w in [*reversed(widths[:-1]), widths[0]]:
            decoder += [nn.ConvTranspose2d(c_in, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
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
                bias = torch.empty(module.bias.shape).uniform_(-bound, bound, generator=generator)
                module.weight.copy_(weight)
                module.bias.copy_(bias)


class AutoencoderTrainer:
    """One autoencoder with its Adam optimiser: updates on patch batches, loss maps of images.

    Args:
        channels: Image channels.
        config: Architecture, learning rate and device.
    """

    def __init__(self, channels: int, config: AutoencoderConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model = ConvAutoencoder(channels, config.width, config.depth, config.latent_channels).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)

    def reset(self, generator: torch.Generator) -> None:
        """Fresh weights drawn from ``generator`` and a fresh optimiser state."""
        self.model.reset_parameters(generator)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)

    def update(self, patches: torch.Tensor) -> torch.Tensor:
        """One Adam step on the mean squared error of ``patches`` (B, C, p, p).

        Returns:
            The per-patch mean squared error before the step, shape (B,), detached.
        """
        self.model.train()
        reconstruction = self.model(patches)
        per_patch = (reconstruction - patches).square().mean(dim=(1, 2, 3))
        self.optimizer.zero_grad(set_to_none=True)
        per_patch.mean().backward()
        self.optimizer.step()
        return per_patch.detach()

    @torch.no_grad()
    def loss_maps(self, images: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Per-pixel squared reconstruction error of whole ``images`` (N, C, H, W), averaged over channels.

        Args:
            images: The images, on the model's device.
            chunk: Images per forward pass; default :func:`snapshot_chunk` of the device.

        Returns:
            Loss maps of shape (N, H, W) on the model's device.
        """
        self.model.eval()
        chunk = chunk or snapshot_chunk(self.device)
        maps = [
            (self.model(part) - part).square().mean(dim=1) for part in torch.split(images, chunk, dim=0)
        ]
        return torch.cat(maps, dim=0)


class BatchedAutoencoderTrainer:
    """N independent autoencoders trained as one batched computation on the device.

    The N models' parameters are stacked along a leading axis and run through
    :func:`torch.func.vmap` (for convolutions this becomes grouped convolutions), so one update of all N
    costs one launch of each layer instead of N. Each model has its own initialisation, its own Adam
    state (moments and step count) and its own data; numerically each slot follows exactly the update
    rule of :class:`AutoencoderTrainer` (same initialisation draws, same Adam arithmetic), up to float
    rounding of the batched kernels.

    Args:
        n_models: Number of autoencoders N.
        channels: Image channels.
        config: Architecture, learning rate and device (shared by all N).
    """

    _BETAS = (0.9, 0.999)
    _EPS = 1e-8

    def __init__(self, n_models: int, channels: int, config: AutoencoderConfig) -> None:
        if n_models < 1:
            raise ValueError(f"n_models: must be >= 1, got {n_models}")
        self.n_models = n_models
        self.config = config
        self.device = resolve_device(config.device)
        # The template draws initial weights on the CPU exactly as a single trainer does; the module on
        # the device only supplies the architecture to functional_call.
        self._template = ConvAutoencoder(channels, config.width, config.depth, config.latent_channels)
        self._module = ConvAutoencoder(channels, config.width, config.depth, config.latent_channels).to(self.device)
        self.params = {
            name: torch.zeros((n_models, *p.shape), device=self.device, requires_grad=True)
            for name, p in self._template.named_parameters()
        }
        self._exp_avg = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self._exp_avg_sq = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self._steps = torch.zeros(n_models, dtype=torch.float64, device=self.device)
        self._update_all = torch.func.vmap(self._per_patch_loss)
        self._maps_all = torch.func.vmap(self._loss_map, in_dims=(0, None))

    @torch.no_grad()
    def reset(self, slots: list[int], generators: list[torch.Generator]) -> None:
        """Fresh weights for the models in ``slots``, each drawn from its generator; fresh Adam state."""
        for slot, generator in zip(slots, generators, strict=True):
            self._template.reset_parameters(generator)
            for name, value in self._template.named_parameters():
                self.params[name][slot].copy_(value)
                self._exp_avg[name][slot].zero_()
                self._exp_avg_sq[name][slot].zero_()
            self._steps[slot] = 0

    def update(self, patches: torch.Tensor) -> torch.Tensor:
        """One Adam step of every model on its own batch; ``patches`` is (N, B, C, p, p).

        Returns:
            The per-patch mean squared error before the step, shape (N, B), detached.
        """
        self._module.train()
        per_patch = self._update_all(self.params, patches)
        names = list(self.params)
        # Summing the N mean losses gives each model exactly the gradient of its own loss.
        grads = torch.autograd.grad(per_patch.mean(dim=1).sum(), [self.params[name] for name in names])
        self._adam_step(dict(zip(names, grads, strict=True)))
        return per_patch.detach()

    @torch.no_grad()
    def loss_maps(self, images: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Loss maps of the same ``images`` (M, C, H, W) under every model: shape (N, M, H, W).

        ``chunk`` images go through all N models per pass; by default :func:`snapshot_chunk` of the
        device divided among the models.
        """
        self._module.eval()
        chunk = chunk or max(1, snapshot_chunk(self.device) // self.n_models)
        params = {name: p.detach() for name, p in self.params.items()}
        return torch.cat([self._maps_all(params, part) for part in torch.split(images, chunk, dim=0)], dim=1)

    def _per_patch_loss(self, params: dict[str, torch.Tensor], patches: torch.Tensor) -> torch.Tensor:
        reconstruction = torch.func.functional_call(self._module, params, (patches,))
        return (reconstruction - patches).square().mean(dim=(1, 2, 3))

    def _loss_map(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return (torch.func.functional_call(self._module, params, (images,)) - images).square().mean(dim=1)

    @torch.no_grad()
    def _adam_step(self, grads: dict[str, torch.Tensor]) -> None:
        """Adam as ``torch.optim.Adam`` computes it, with a step count per model."""
        beta1, beta2 = self._BETAS
        self._steps += 1
        bias_correction1 = 1 - beta1**self._steps
        step_size = (self.config.learning_rate / bias_correction1).float()
        bias_correction2_sqrt = ((1 - beta2**self._steps) ** 0.5).float()
        for name, param in self.params.items():
            grad = grads[name]
            shape = (self.n_models,) + (1,) * (param.dim() - 1)
            exp_avg, exp_avg_sq = self._exp_avg[name], self._exp_avg_sq[name]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(shape)).add_(self._EPS)
            param.sub_(step_size.view(shape) * exp_avg / denom)
