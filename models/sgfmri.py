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

from .complex_channels import to_channels
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
    # Unrolled form (cascades >= 1): start from a classical estimate, then `cascades` times
    # "network adds a residual, exact DC" with one set of network weights and a learned DC weight per
    # cascade; the reference's features are computed once. 0 = the one-shot network of the paper.
    cascades: int = 0
    start: str = "zero-filled"      # or "cg-sense": the regularised CG-SENSE image the network improves on
    start_iterations: int = 15
    start_tikhonov: float = 1e-3    # relative to A^H A (<= 1), as models.baselines.cg_sense
    # A learned per-location, per-channel-group gate on everything the reference contributes, from
    # both contrasts' features: trained with wrong, shifted and missing references it learns to close
    # where the reference does not describe the target, so a misleading reference costs little.
    gate: bool = False

    def __post_init__(self) -> None:
        if self.start not in ("zero-filled", "cg-sense"):
            raise ValueError(f"start must be 'zero-filled' or 'cg-sense', got {self.start!r}")
        if self.cascades < 0:
            raise ValueError("cascades must be >= 0")

    @classmethod
    def unrolled(cls, cascades: int = 3) -> "SGFMRIConfig":
        """The CPU-sized network unrolled from a CG-SENSE start, with the reference gate."""
        # Tikhonov 0.03, 10 iterations: with 1e-3 and 15 (the CG-SENSE anchor of the evaluation, tuned on
        # noiseless data) the start amplified noise up to 4.7x the zero-filled error on noisy, poorly
        # conditioned training samples (few coils, 8-10x); at 0.03 it is never worse than 1.7x, 1.0x on average
        return cls(channels=16, groups=8, squeeze=32, heads=4, cascades=cascades, start="cg-sense", gate=True,
                   dc_noise_weight=10.0, start_tikhonov=0.03, start_iterations=10)

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


class NeighbourhoodSimilarity(nn.Module):
    """MCNS: four kinds of group-wise neighbour similarity, saliency-weighted, squeezed.

    The 8 neighbours of a map come from one replicate-padded copy, and each map's distances to its own
    neighbours (which set its ``sigma^2``) are computed once and used by both kinds that need them."""

    def __init__(self, c: int, groups: int, squeeze: int, eps: float = 1e-3) -> None:
        super().__init__()
        if c % groups:
            raise ValueError(f"channels {c} not divisible by groups {groups}")
        self.groups, self.eps = groups, eps
        self.squeeze = nn.Conv2d(4 * len(NEIGHBOUR_OFFSETS) * groups, squeeze, 1)

    @staticmethod
    def neighbours(x: torch.Tensor) -> torch.Tensor:
        """``(8, B, C, H, W)``: ``x`` looked up at each offset (edges replicated), offset-major."""
        h, w = x.shape[-2:]
        xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
        return torch.stack([xp[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] for dy, dx in NEIGHBOUR_OFFSETS])

    def _sq_dist(self, a: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
        """Group-wise mean squared distance of ``a (B, C, H, W)`` to each neighbour: ``(8, B, G, H, W)``."""
        k, n, c, h, w = nb.shape
        d = (a.unsqueeze(0) - nb).view(k, n, self.groups, c // self.groups, h, w)
        return (d * d).mean(3)

    def _similarity(self, dist: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
        """``exp(-d / (sigma^2 + eps))`` as ``(B, 8*G, H, W)`` in offset-major channel order."""
        sim = torch.exp(-dist / (sigma2 + self.eps))
        k, n, g, h, w = sim.shape
        return sim.permute(1, 0, 2, 3, 4).reshape(n, k * g, h, w)

    def similarities(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``exp(-||a_j - b_{j+o}||^2 / (sigma_j^2 + eps))`` for the 8 offsets: ``(B, 8*G, H, W)``."""
        own = self._sq_dist(a, self.neighbours(a))
        cross = own if b is a else self._sq_dist(a, self.neighbours(b))
        return self._similarity(cross, own.mean(0))

    def reference_parts(self, fr: torch.Tensor, sr: torch.Tensor) -> dict[str, torch.Tensor]:
        """What depends on the reference alone: computed once when an unrolled network calls this stage
        several times with the same reference."""
        k = len(NEIGHBOUR_OFFSETS)
        nr = self.neighbours(fr)
        own_r = self._sq_dist(fr, nr)
        sig_r = own_r.mean(0)
        sr_rep = sr.repeat(1, k, 1, 1)
        return {"nr": nr, "sig_r": sig_r, "sr_rep": sr_rep, "rr": self._similarity(own_r, sig_r) * sr_rep}

    def forward(self, ft: torch.Tensor, fr: torch.Tensor, st: torch.Tensor, sr: torch.Tensor,
                ref_parts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        k = len(NEIGHBOUR_OFFSETS)
        r = ref_parts or self.reference_parts(fr, sr)
        nt = self.neighbours(ft)
        own_t = self._sq_dist(ft, nt)
        sig_t = own_t.mean(0)
        st_rep = st.repeat(1, k, 1, 1)  # matches the offset-major order
        parts = [self._similarity(own_t, sig_t) * st_rep, self._similarity(self._sq_dist(ft, r["nr"]), sig_t) * st_rep,
                 self._similarity(self._sq_dist(fr, nt), r["sig_r"]) * r["sr_rep"], r["rr"]]
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


class ReferenceGate(nn.Module):
    """Trust in the reference, ``(B, groups, H, W)`` in (0, 1), from target and reference features and
    their product (co-located structure). Starts mostly open (sigmoid(2) = 0.88)."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.net = nn.Sequential(nn.Conv2d(3 * c, c, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(c, groups, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, 2.0)

    def forward(self, ft: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat((ft, fr, ft * fr), 1)))


class MCSD(nn.Module):
    """SAN + MCNS + SFA on one stage; returns the fused target feature (the reference's share gated)."""

    def __init__(self, c: int, groups: int, squeeze: int, heads: int, gate: bool = False) -> None:
        super().__init__()
        self.san_t = SaliencyAdaptiveNeighbourhood(c, groups)
        self.san_r = SaliencyAdaptiveNeighbourhood(c, groups)
        self.mcns = NeighbourhoodSimilarity(c, groups, squeeze)
        self.sfa = StructureFeatureAttention(c, squeeze, heads)
        self.gate = ReferenceGate(c, groups) if gate else None

    def reference_parts(self, fr: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.mcns.reference_parts(fr, self.san_r(fr))

    def forward(self, ft: torch.Tensor, fr: torch.Tensor, ref_parts: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        sr = None if ref_parts is not None else self.san_r(fr)
        descriptor = self.mcns(ft, fr, self.san_t(ft), sr, ref_parts)
        fused = self.sfa(descriptor, ft, fr)
        if self.gate is not None:
            g = self.gate(ft, fr)
            b, c, h, w = fused.shape
            fused = (fused.view(b, g.shape[1], c // g.shape[1], h, w) * g.unsqueeze(2)).view(b, c, h, w)
        return ft + fused


class SGFMRI(nn.Module):
    """The full network with DC; see the module docstring."""

    def __init__(self, cfg: SGFMRIConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or SGFMRIConfig.cpu_small()
        widths = (cfg.channels, 2 * cfg.channels, 2 * cfg.channels)
        self.head = nn.Conv2d(2, widths[0], 3, padding=1)
        self.enc = nn.ModuleList(ResBlock(c) for c in widths)
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1) for i in range(2))
        self.mcsd = nn.ModuleList(MCSD(c, cfg.groups, cfg.squeeze, cfg.heads, cfg.gate) for c in widths)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(2))
        self.merge = nn.ModuleList(nn.Conv2d(2 * widths[i], widths[i], 1) for i in range(2))
        self.dec = nn.ModuleList(ResBlock(widths[i]) for i in range(2))
        self.tail = nn.Conv2d(widths[0], 2, 3, padding=1)
        learn = cfg.dc_learnable and cfg.dc_mode == "soft"
        self.dc = DataConsistency(cfg.dc_mode, cfg.dc_noise_weight, learnable=learn)
        # the unrolled form's DC after each cascade but the last (the last is self.dc)
        self.dc_cascades = nn.ModuleList(DataConsistency(cfg.dc_mode, cfg.dc_noise_weight, learnable=learn)
                                         for _ in range(max(cfg.cascades - 1, 0)))

    def dc_layers(self) -> list[DataConsistency]:
        return [*self.dc_cascades, self.dc]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, f = [], F.leaky_relu(self.head(x), 0.1)
        for i, blk in enumerate(self.enc):
            f = blk(f)
            feats.append(f)
            if i < 2:
                f = F.leaky_relu(self.down[i](f), 0.1)
        return feats

    @staticmethod
    def _pad(x: torch.Tensor) -> torch.Tensor:
        ph, pw = (-x.shape[-2]) % 4, (-x.shape[-1]) % 4
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x

    def refine(self, x: torch.Tensor, ref_feats: list[torch.Tensor], ref_parts: list[dict] | None = None
               ) -> torch.Tensor:
        """One pass of the guided network: ``x + residual`` (``(B, 2, H, W)``, no DC)."""
        h, w = x.shape[-2:]
        ft = self.encode(self._pad(x))
        parts = ref_parts or [None] * len(self.mcsd)
        skips = [m(a, b, p) for m, a, b, p in zip(self.mcsd, ft, ref_feats, parts)]
        d = skips[2]
        for i in (1, 0):
            d = self.dec[i](self.merge[i](torch.cat((self.up[i](d), skips[i]), 1)))
        return x + self.tail(d)[..., :h, :w]

    def _dc(self, layer: DataConsistency, x: torch.Tensor, kspace, mask, maps) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return layer.forward_channels(x.float(), kspace, mask, maps).to(x.dtype)

    def classical_start(self, target: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
                        maps: torch.Tensor | None) -> torch.Tensor:
        """The estimate the unrolled network improves on: the zero-filled input, or regularised CG-SENSE
        of the measured k-space (``models.baselines.cg_sense``'s problem, here in torch)."""
        if self.cfg.start == "zero-filled":
            return target
        from .operators import conjugate_gradient, expand_mask, sense_adjoint, sense_forward

        with torch.no_grad(), torch.autocast(device_type=target.device.type, enabled=False):
            y = kspace.to(torch.complex64)
            m = expand_mask(mask.to(y.device), *y.shape[-2:])
            lam = self.cfg.start_tikhonov
            x = conjugate_gradient(lambda v: sense_adjoint(sense_forward(v, maps, m), maps, m) + lam * v,
                                   sense_adjoint(y, maps, m), iterations=self.cfg.start_iterations)
        return to_channels(x).to(target.dtype)

    def forward(self, target: torch.Tensor, reference: torch.Tensor | None = None,
                kspace: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """``target, reference (B, 2, H, W)`` -> ``(B, 2, H, W)``; DC when ``kspace`` is given.

        ``kspace (B, C, H, W)`` complex in the images' scaling; ``mask`` per
        ``models.operators.expand_mask`` (a 2-D centre block for super-resolution).
        The unrolled form (``cfg.cascades >= 1``) needs ``kspace``.
        """
        ref = torch.zeros_like(target) if reference is None else reference
        ref_feats = self.encode(self._pad(ref))
        if self.cfg.cascades == 0:
            out = self.refine(target, ref_feats)
            return out if kspace is None else self._dc(self.dc, out, kspace, mask, maps)
        if kspace is None:
            raise ValueError("the unrolled SGF-MRI needs the measured k-space")
        x = self.classical_start(target, kspace, mask, maps)
        ref_parts = [m.reference_parts(f) for m, f in zip(self.mcsd, ref_feats)]
        for layer in self.dc_layers():
            x = self._dc(layer, self.refine(x, ref_feats, ref_parts), kspace, mask, maps)
        return x


def lowres_mask(ny: int, nx: int, factor: float) -> torch.Tensor:
    """Super-resolution "mask": the centred ``ny/f x nx/f`` block of k-space a low-res scan measures, ``(ny, nx)`` bool."""
    my, mx = max(int(round(ny / factor)), 1), max(int(round(nx / factor)), 1)
    m = torch.zeros(ny, nx, dtype=torch.bool)
    y0, x0 = ny // 2 - my // 2, nx // 2 - mx // 2
    m[y0:y0 + my, x0:x0 + mx] = True
    return m


__all__ = ["SGFMRIConfig", "SGFMRI", "MCSD", "ReferenceGate", "NeighbourhoodSimilarity", "SaliencyAdaptiveNeighbourhood",
           "StructureFeatureAttention", "lowres_mask"]
