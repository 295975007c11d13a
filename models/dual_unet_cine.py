"""A third servable model: the dual U-Net + 3-D ResNet baseline on a cine model's three-frame window.

This module is what adding a model to the plugin takes: a network that
answers an operation's network contract (here ``cine``, see
:mod:`models.inference`) and one :func:`models.registry.register` call.
Importing it registers ``dual_unet_cine``; the servers import it with
``--model-module models.dual_unet_cine``, a pipeline selects it with the cine
gadget's property ``model``, and the operator names its weights
(``model_weights`` / ``--weights dual_unet_cine=PATH``): no gadget, server or
client changes.

The network is :class:`models.baselines.DualUNetResNet3D` over the window's
three frames in time order (real and imaginary parts through their own
U-Nets, then the 3-D ResNet), its middle output frame taken, followed by
hard data consistency with the target frame's measured k-space. It ships no
weights: it is a baseline and a test of the registry, not a product model.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from . import registry
from .baselines import DualUNetResNet3D
from .dc import DataConsistency

NAME = "dual_unet_cine"


class DualUNetCine(nn.Module):
    """``forward(target, mentor, learner, kspace=, mask=, maps=)`` on 2-channel ``(B, 2, ny, nx)`` tensors."""

    def __init__(self, width: int = 16, resnet_width: int = 8, resnet_blocks: int = 2) -> None:
        super().__init__()
        self.init_kwargs = {"width": width, "resnet_width": resnet_width, "resnet_blocks": resnet_blocks}
        self.net = DualUNetResNet3D(frames=3, width=width, resnet_width=resnet_width, resnet_blocks=resnet_blocks)
        self.dc = DataConsistency("hard")

    def forward(self, target: torch.Tensor, mentor: torch.Tensor, learner: torch.Tensor, *, kspace: torch.Tensor,
                mask: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        # mentor and learner are the window's other two frames; their time order around the target does
        # not matter to a network that sees all three at once, so they sit either side of it
        frames = torch.stack((mentor, target, learner), dim=2)  # (B, 2, 3, ny, nx)
        return self.dc.forward_channels(self.net(frames)[:, :, 1], kspace, mask, maps)


def build(config: Mapping[str, Any] | None) -> DualUNetCine:
    return DualUNetCine(**dict(config or {}))


ENTRY = registry.register(registry.ModelEntry(
    NAME, "cine", build, display="Dual U-Net", recon_method="dual U-Net + k-space DC",
    description="dual U-Net + 3-D ResNet baseline on a three-frame window, hard DC (no shipped weights)"))

__all__ = ["DualUNetCine", "ENTRY", "NAME", "build"]
