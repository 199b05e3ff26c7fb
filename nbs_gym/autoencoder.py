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
    def loss_maps(self, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Per-pixel squared reconstruction error of whole ``images`` (N, C, H, W), averaged over channels.

        Returns:
            Loss maps of shape (N, H, W) on the model's device.
        """
        self.model.eval()
        maps = [
            (self.model(part) - part).square().mean(dim=1) for part in torch.split(images, chunk, dim=0)
        ]
        return torch.cat(maps, dim=0)
