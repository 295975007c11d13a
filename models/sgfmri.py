"""SGF-MRI: structure-guided fusion for multi-contrast MRI (Zheng, Du, Qin, Pattern Recognition 2026).

A fully sampled reference contrast (e.g. T1w) guides an undersampled
(reconstruction) or low-resolution (super-resolution) target contrast of the
same anatomy. Written from the paper (``shared/seeds/001``); no public code
exists and none was copied.

Tensors: complex images as 2 channels (real, imag), NCHW float;
``target``, ``reference`` ``(B, 2, H, W)``, any ``H, W`` (padded to a multiple
of 4 inside and cropped back); output ``(B, 2, H, W)``. A magnitude-only
reference goes in as ``(|ref|, 0)``. Without a reference pass ``None``: the
reference branch sees zeros (the shipped weights were trained with the
reference dropped 20 % of the time, so the same weights serve both).

Architecture (paper -> this code)
---------------------------------
- Backbone after DCAMSR: a conv encoder over 3 stages (full, 1/2, 1/4
  resolution; residual conv blocks, stride-2 down-sampling), skip
  connections into a mirrored decoder. The encoder's weights are shared by
  the target and the reference branch (the "shared-weight encoder"); our
  reading of the paper, which does not spell out further sharing.
- MCSD (multi-contrast structural distillation) on every stage's skip:
  - SAN: 3x3 conv, LeakyReLU, 1x1 conv, sigmoid -> one saliency per channel
    group and position, for target and reference separately.
  - MCNS: per channel group, the similarity
    ``exp(-||f_j - f_k||^2 / (sigma_j^2 + eps))`` of each token with its 8
    neighbours (offsets 1 and 2 up/down/left/right), ``sigma_j^2`` the mean
    squared difference of ``f_j`` to its own 8 neighbours; four kinds
    (target-target, target-reference, reference-target,
    reference-reference), weighted by the saliency of the first contrast,
    concatenated and squeezed by a 1x1 (linear) map to ``squeeze`` (64)
    channels. Cost: ``O(8 * 4 * pixels)`` -- linear in pixels.
  - SFA: one attention, the squeezed descriptor as the query, the encoder
    features (target and reference, mixed by a 1x1 conv) as keys and values.
    Chosen here as channel ("transposed") attention, whose cost is linear in
    pixels; the paper does not state the form. Its output is added to the
    target's skip feature that enters the decoder.
- DC on the target: reconstruction -> the measured (undersampled) k-space;
  super-resolution -> the measured low-resolution k-space centre (use
  :func:`lowres_mask` as the mask). Both through ``models.dc``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dc import DataConsistency

NEIGHBOUR_OFFSETS = ((-1, 0), (-2, 0), (1, 0), (2, 0), (0, -1), (0, -2), (0, 1), (0, 2))


@dataclass
class SGFMRIConfig:
    channels: int = 32          # features at full resolution; 2x at the lower two stages
    groups: int = 8             # channel groups in SAN/MCNS
    squeeze: int = 64           # structure descriptor width
    heads: int = 4              # SFA heads
    dc_mode: str = "soft"
    dc_noise_weight: float = 100.0
    dc_learnable: bool = True

    @classmethod
    def paper(cls) -> "SGFMRIConfig":
        """Closest to the paper's ~4 M parameters: 64 base channels."""
        return cls(channels=64)

    @classmethod
    def cpu_small(cls) -> "SGFMRIConfig":
        return cls(channels=16, groups=8, squeeze=32, heads=4)

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SaliencyAdaptiveNeighbourhood(nn.Module):
    """SAN: ``(B, C, H, W)`` -> saliency ``(B, G, H, W)`` in (0, 1)."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(c, groups, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., i, j] = x[..., i+dy, j+dx]`` with edge replication (a neighbour lookup)."""
    p = max(abs(dy), abs(dx))
    xp = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return xp[..., p + dy:p + dy + h, p + dx:p + dx + w]


class NeighbourhoodSimilarity(nn.Module):
    """MCNS: four kinds of group-wise neighbour similarity, saliency-weighted, squeezed."""

    def __init__(self, c: int, groups: int, squeeze: int, eps: float = 1e-3) -> None:
        super().__init__()
        if c % groups:
            raise ValueError(f"channels {c} not divisible by groups {groups}")
        self.groups, self.eps = groups, eps
        self.squeeze = nn.Conv2d(4 * len(NEIGHBOUR_OFFSETS) * groups, squeeze, 1)

    def _grouped_sq_dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, c, h, w = a.shape
        d = (a - b).view(n, self.groups, c // self.groups, h, w)
        return (d * d).mean(2)  # (B, G, H, W)

    def similarities(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``exp(-||a_j - b_{j+o}||^2 / (sigma_j^2 + eps))`` for the 8 offsets: ``(B, 8*G, H, W)``."""
        own = [self._grouped_sq_dist(a, _shift(a, dy, dx)) for dy, dx in NEIGHBOUR_OFFSETS]
        sigma2 = torch.stack(own, 0).mean(0)
        cross = own if b is a else [self._grouped_sq_dist(a, _shift(b, dy, dx)) for dy, dx in NEIGHBOUR_OFFSETS]
        return torch.cat([torch.exp(-d / (sigma2 + self.eps)) for d in cross], dim=1)

    def forward(self, ft: torch.Tensor, fr: torch.Tensor, st: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        k = len(NEIGHBOUR_OFFSETS)
        st_rep, sr_rep = st.repeat(1, k, 1, 1), sr.repeat(1, k, 1, 1)  # matches the offset-major concat order
        parts = [self.similarities(ft, ft) * st_rep, self.similarities(ft, fr) * st_rep,
                 self.similarities(fr, ft) * sr_rep, self.similarities(fr, fr) * sr_rep]
        return self.squeeze(torch.cat(parts, 1))


class StructureFeatureAttention(nn.Module):
    """SFA: descriptor as query, encoder features as keys/values; channel attention, linear in pixels."""

    def __init__(self, c: int, squeeze: int, heads: int) -> None:
        super().__init__()
        if c % heads:
            raise ValueError(f"channels {c} not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Conv2d(squeeze, c, 1)
        self.kv_mix = nn.Conv2d(2 * c, c, 1)
        self.kv = nn.Conv2d(c, 2 * c, 1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, descriptor: torch.Tensor, ft: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
        b, c, h, w = ft.shape
        q = self.q(descriptor).view(b, self.heads, c // self.heads, h * w)
        k, v = self.kv(self.kv_mix(torch.cat((ft, fr), 1))).chunk(2, dim=1)
        k = k.reshape(b, self.heads, c // self.heads, h * w)
        v = v.reshape(b, self.heads, c // self.heads, h * w)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)) * self.temperature
        out = (attn.softmax(-1) @ v).view(b, c, h, w)
        return self.proj(out)


class MCSD(nn.Module):
    """SAN + MCNS + SFA on one stage; returns the fused target feature."""

    def __init__(self, c: int, groups: int, squeeze: int, heads: int) -> None:
        super().__init__()
        self.san_t = SaliencyAdaptiveNeighbourhood(c, groups)
        self.san_r = SaliencyAdaptiveNeighbourhood(c, groups)
        self.mcns = NeighbourhoodSimilarity(c, groups, squeeze)
        self.sfa = StructureFeatureAttention(c, squeeze, heads)

    def forward(self, ft: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
        descriptor = self.mcns(ft, fr, self.san_t(ft), self.san_r(fr))
        return ft + self.sfa(descriptor, ft, fr)


class SGFMRI(nn.Module):
    """The full network with DC; see the module docstring."""

    def __init__(self, cfg: SGFMRIConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or SGFMRIConfig.cpu_small()
        widths = (cfg.channels, 2 * cfg.channels, 2 * cfg.channels)
        self.head = nn.Conv2d(2, widths[0], 3, padding=1)
        self.enc = nn.ModuleList(ResBlock(c) for c in widths)
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1) for i in range(2))
        self.mcsd = nn.ModuleList(MCSD(c, cfg.groups, cfg.squeeze, cfg.heads) for c in widths)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(2))
        self.merge = nn.ModuleList(nn.Conv2d(2 * widths[i], widths[i], 1) for i in range(2))
        self.dec = nn.ModuleList(ResBlock(widths[i]) for i in range(2))
        self.tail = nn.Conv2d(widths[0], 2, 3, padding=1)
        self.dc = DataConsistency(cfg.dc_mode, cfg.dc_noise_weight, learnable=cfg.dc_learnable and cfg.dc_mode == "soft")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, f = [], F.leaky_relu(self.head(x), 0.1)
        for i, blk in enumerate(self.enc):
            f = blk(f)
            feats.append(f)
            if i < 2:
                f = F.leaky_relu(self.down[i](f), 0.1)
        return feats

    def forward(self, target: torch.Tensor, reference: torch.Tensor | None = None,
                kspace: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """``target, reference (B, 2, H, W)`` -> ``(B, 2, H, W)``; DC when ``kspace`` is given.

        ``kspace (B, C, H, W)`` complex in the images' scaling; ``mask`` per
        ``models.operators.expand_mask`` (a 2-D centre block for super-resolution).
        """
        h, w = target.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        ref = torch.zeros_like(target) if reference is None else reference
        xt = F.pad(target, (0, pw, 0, ph), mode="replicate") if (ph or pw) else target
        xr = F.pad(ref, (0, pw, 0, ph), mode="replicate") if (ph or pw) else ref
        ft, fr = self.encode(xt), self.encode(xr)
        skips = [m(a, b) for m, a, b in zip(self.mcsd, ft, fr)]
        d = skips[2]
        for i in (1, 0):
            d = self.dec[i](self.merge[i](torch.cat((self.up[i](d), skips[i]), 1)))
        out = target + self.tail(d)[..., :h, :w]
        if kspace is None:
            return out
        with torch.autocast(device_type=out.device.type, enabled=False):
            return self.dc.forward_channels(out.float(), kspace, mask, maps).to(out.dtype)


def lowres_mask(ny: int, nx: int, factor: float) -> torch.Tensor:
    """Super-resolution "mask": the centred ``ny/f x nx/f`` block of k-space a low-res scan measures, ``(ny, nx)`` bool."""
    my, mx = max(int(round(ny / factor)), 1), max(int(round(nx / factor)), 1)
    m = torch.zeros(ny, nx, dtype=torch.bool)
    y0, x0 = ny // 2 - my // 2, nx // 2 - mx // 2
    m[y0:y0 + my, x0:x0 + mx] = True
    return m


__all__ = ["SGFMRIConfig", "SGFMRI", "MCSD", "NeighbourhoodSimilarity", "SaliencyAdaptiveNeighbourhood",
           "StructureFeatureAttention", "lowres_mask"]
