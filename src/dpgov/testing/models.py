"""Tiny model factories for tests of ``model.factory`` (dpgov.training.factory).

``tiny_bn_net``: conv → BatchNorm → ReLU(inplace) → pool → Linear(``classes``), the shape of a
torchvision/MONAI classifier at toy size. ``tiny_unprivate_net``: a trainable layer that holds
a buffer, which Opacus cannot make private. ``not_a_module``: returns a dict.
"""

from __future__ import annotations

from typing import Any


def tiny_bn_net(in_channels: int = 1, width: int = 4, classes: int = 3) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


def tiny_unprivate_net(in_channels: int = 1) -> Any:
    import torch
    from torch import nn

    class Scaled(nn.Module):
        """A trainable scale with a running buffer: not private under Opacus."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.register_buffer("seen", torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 1), Scaled())


def not_a_module() -> Any:
    return {"weights": []}
