"""KGMgT: Knowledge-Guided Multi-Geometric Window Transformer (Lyu et al., MedIA 2026).

Cardiac cine reconstruction of frame ``t`` from its undersampled, coil-combined
image and two neighbouring frames. Written from the paper (``shared/seeds/000``);
no code was copied.

Tensors: complex images as 2 channels (real, imag), NCHW, float. Inputs
``target``, ``ref_mentor``, ``ref_learner`` are ``(B, 2, H, W)`` zero-filled
images already scaled to roughly unit range (the inference wrapper does it);
any ``H, W`` (the network pads and crops back). Output ``(B, 2, H, W)``.

Architecture (paper -> this code)
---------------------------------
- **Knowledge-guided mechanism.** One generator ``G`` with shared weights is
  called twice. Mentor pass: ``Input_kg = G(Input, Ref_{t-1}) + Input``;
  it also returns the five stage feature maps ``FM_kg`` (3 encoder stages +
  2 decoder stages of a 3-scale U-Net). Learner pass:
  ``Rec = G(Input_kg, Ref_{t+1}, FM_kg) + Input_kg``, the mentor's features
  concatenated into every stage's fusion convolution (zeros in the mentor
  pass, since the weights are shared). The loss is on ``Rec``.
- **ASA** (adaptive spatiotemporal attention), per stage: local correlation of
  target and reference features over a ``(2r+1)^2`` displacement window ->
  displacement (flow) -> deformable sampling of the reference at 9 points
  (3x3 kernel) per offset group around ``x + flow``, with learned bounded
  offsets (``max_offset * tanh``) and modulation, by ``grid_sample``; a 1x1
  convolution over the 9 samples plays the deformable kernel.
  Deviations, stated: the official code takes an arg-max displacement of
  VGG19 features and mmcv's CUDA deformable conv; here the matching features
  are learned (no pretrained VGG offline), the displacement is a soft-argmax
  (differentiable, sub-pixel) and sampling uses ``grid_sample`` (CPU and CUDA).
- **TdFA + MGwinT**, per stage: ``F' = Conv(MGwinT(Conv(cat(F, FM_kg, D))) + F)``
  with ``D`` the ASA-aligned reference. MGwinT blocks split the channels into
  a square-window branch (Swin-style, cyclic shift of half a window on odd
  blocks, with the shift mask) and a rectangular stripe branch
  (``window/2 x 2*window`` tokens, orientation alternating block to block),
  each with a learned relative-position bias, then an MLP.
- **DC** after the output (``models.dc.DataConsistency``, multi-coil through
  maps when given). Unlike the official code (its DC call is commented out)
  DC is applied, and also after the mentor pass (``dc_after_mentor``), so the
  learner starts from a data-consistent image; set it False for the paper's
  single DC.
- **Any matrix size**: the input is reflect-padded to a multiple of 4 (two
  down-samplings) and each attention layer zero-pads its map to its window
  multiple (as Swin does) and crops back; the output is cropped to ``H, W``.

Causal streaming: call with ``ref_mentor = t-1`` and ``ref_learner = t-2``
(no look-ahead). The shipped weights were trained on both centred and causal
windows, so one set serves both.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .complex_channels import from_channels, to_channels
from .dc import DataConsistency


@dataclass
class KGMgTConfig:
    """Hyper-parameters. ``official()`` is the paper's/official repo's setting."""

    channels: int = 16          # features at every scale (official: 16)
    depth: int = 4              # MGwinT blocks per stage (paper: n = 4)
    heads: int = 4              # attention heads, split over the two branches
    window: int = 8             # square window side; stripes are window/2 x 2*window
    mlp_ratio: float = 2.0
    asa_groups: int = 4         # deformable offset groups
    asa_radius: int = 3         # correlation search radius (px at each scale)
    max_offset: float = 10.0    # cap of learned offsets at full resolution (px)
    dc_mode: str = "soft"
    dc_noise_weight: float = 100.0
    dc_learnable: bool = True
    dc_after_mentor: bool = True
    # What the three input frames are: "zero-filled" SENSE images (the paper), or "view-shared"
    # SENSE images (each missing line from the nearest frame that measured it, models.view_sharing):
    # at 8x a frame alone holds 1/8 of k-space, the stream already holds nearly all of it.
    inputs: str = "zero-filled"
    dc_on_input: bool = False   # soft-DC the target input before the first pass (view-shared input)
    cascades: int = 1           # mentor/learner passes (shared weights), each ending in DC
    # One learned DC weight per DC step (input, after the mentor, at the output) instead of one shared:
    # the input step anchors a view-shared image to the frame's own lines (CG-SENSE from a good start),
    # the last one decides how far measured lines may move; they need not agree.
    dc_per_step: bool = False

    def __post_init__(self) -> None:
        if self.inputs not in ("zero-filled", "view-shared"):
            raise ValueError(f"inputs must be 'zero-filled' or 'view-shared', got {self.inputs!r}")
        if self.cascades < 1:
            raise ValueError("cascades must be >= 1")

    @classmethod
    def official(cls) -> "KGMgTConfig":
        return cls(channels=16, depth=4, heads=4, window=8, mlp_ratio=2.0)

    @classmethod
    def cpu_small(cls) -> "KGMgTConfig":
        """The narrower setting the shipped CPU-trained weights use."""
        return cls(channels=16, depth=1, heads=4, window=8, mlp_ratio=2.0, asa_radius=2)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- attention


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``wh x ww`` windows of a ``(B, H, W, C)`` map.

    Pads the map with zeros to a window multiple and crops back; optional
    cyclic shift with the Swin mask so tokens only attend within their
    original region. Learned relative-position bias per head.
    """

    def __init__(self, dim: int, heads: int, window: tuple[int, int], shift: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.dim, self.heads, self.window, self.shift = dim, heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        wh, ww = window
        self.bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        wh, ww = self.window
        ph, pw = (-h) % wh, (-w) % ww
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        sh, sw = self.shift if (hp > wh and wp > ww) else (0, 0)
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        win = x.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)
        qkv = self.qkv(win).view(win.shape[0], wh * ww, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1).to(qkv.dtype)  # (heads, N, N)
        if sh or sw:
            mask = _shift_mask(hp, wp, wh, ww, sh, sw, x.device).to(qkv.dtype)  # (nW, N, N)
            nw = mask.shape[0]
            attn_bias = (bias[None, None] + mask[None, :, None]).expand(b, nw, -1, -1, -1).reshape(b * nw, self.heads, wh * ww, wh * ww)
        else:
            attn_bias = bias[None]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_bias)
        out = self.proj(out.transpose(1, 2).reshape(win.shape[0], wh * ww, c))
        out = out.view(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        return out[:, :h, :w]


@lru_cache(maxsize=64)
def _shift_mask_cpu(hp: int, wp: int, wh: int, ww: int, sh: int, sw: int) -> torch.Tensor:
    region = torch.zeros(hp, wp)
    count = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[hs, ws] = count
            count += 1
    win = region.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-1e4), torch.tensor(0.0))


def _shift_mask(hp, wp, wh, ww, sh, sw, device) -> torch.Tensor:
    return _shift_mask_cpu(hp, wp, wh, ww, max(sh, 1), max(sw, 1)).to(device)


class MGwinBlock(nn.Module):
    """One multi-geometric window block on ``(B, H, W, C)``.

    Half the channels (and heads) attend in square windows (shifted on odd
    blocks), the other half in rectangular stripes (horizontal on even,
    vertical on odd blocks); a linear layer mixes the two, then an MLP.
    """

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float, index: int) -> None:
        super().__init__()
        half, hh = dim // 2, max(heads // 2, 1)
        shift = (window // 2, window // 2) if index % 2 else (0, 0)
        stripe = (max(window // 2, 1), 2 * window) if index % 2 == 0 else (2 * window, max(window // 2, 1))
        self.norm1 = nn.LayerNorm(dim)
        self.square = WindowAttention(half, hh, (window, window), shift)
        self.rect = WindowAttention(dim - half, hh, stripe)
        self.mix = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.half = half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        y = torch.cat((self.square(y[..., :self.half]), self.rect(y[..., self.half:])), dim=-1)
        x = x + self.mix(y)
        return x + self.mlp(self.norm2(x))


# ---------------------------------------------------------------- ASA


class AdaptiveSpatiotemporalAttention(nn.Module):
    """Align reference features to target features; ``(B, C, H, W)`` in and out."""

    def __init__(self, dim: int, groups: int, radius: int, max_offset: float, points: int = 9) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"channels {dim} not divisible by offset groups {groups}")
        if points != 9:
            raise ValueError("ASA samples a 3x3 neighbourhood: 9 points")
        self.dim, self.groups, self.radius, self.max_offset, self.points = dim, groups, radius, max_offset, points
        self.query = nn.Conv2d(dim, dim, 1)
        self.key = nn.Conv2d(dim, dim, 1)
        self.value = nn.Conv2d(dim, dim, 1)
        ndisp = (2 * radius + 1) ** 2
        self.temperature = nn.Parameter(torch.tensor(10.0))
        self.offset_net = nn.Sequential(
            nn.Conv2d(dim + ndisp + 2, dim, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(dim, 3 * groups * points, 3, padding=1))
        nn.init.zeros_(self.offset_net[-1].weight)  # start as pure flow-guided sampling
        nn.init.zeros_(self.offset_net[-1].bias)
        self.kernel = nn.Conv2d(dim * points, dim, 1)  # the deformable kernel's weights
        ky, kx = torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij")
        self.register_buffer("kernel_points", torch.stack((kx.flatten(), ky.flatten()), -1).float(), persistent=False)

    def correlation(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each target position with the reference at every displacement: ``(B, D, H, W)``."""
        r = self.radius
        q = F.normalize(q, dim=1)
        k = F.pad(F.normalize(k, dim=1), (r, r, r, r))
        h, w = q.shape[-2:]
        return torch.stack([(q * k[:, :, dy:dy + h, dx:dx + w]).sum(1)
                            for dy in range(2 * r + 1) for dx in range(2 * r + 1)], dim=1)

    def forward(self, target: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the aligned reference ``(B, C, H, W)`` and the flow ``(B, 2, H, W)`` (x, y in px)."""
        b, c, h, w = target.shape
        q, k, v = self.query(target), self.key(reference), self.value(reference)
        corr = self.correlation(q, k)
        r = self.radius
        disp = torch.arange(-r, r + 1, device=target.device, dtype=corr.dtype)
        dy, dx = torch.meshgrid(disp, disp, indexing="ij")
        prob = torch.softmax(self.temperature * corr, dim=1)
        flow = torch.stack(((prob * dx.reshape(1, -1, 1, 1)).sum(1), (prob * dy.reshape(1, -1, 1, 1)).sum(1)), dim=1)
        g, p = self.groups, self.points
        raw = self.offset_net(torch.cat((q, corr, flow), dim=1))
        offsets = self.max_offset * torch.tanh(raw[:, :2 * g * p]).view(b, g, p, 2, h, w)
        modulation = torch.sigmoid(raw[:, 2 * g * p:]).view(b, g, 1, p, h, w)
        ys, xs = torch.meshgrid(torch.arange(h, device=target.device, dtype=flow.dtype),
                                torch.arange(w, device=target.device, dtype=flow.dtype), indexing="ij")
        base = torch.stack((xs, ys), 0).view(1, 1, 1, 2, h, w) + flow.view(b, 1, 1, 2, h, w)
        pos = base + self.kernel_points.to(flow.dtype).view(1, 1, p, 2, 1, 1) + offsets  # (b, g, p, 2, h, w)
        gx = 2 * pos[:, :, :, 0] / max(w - 1, 1) - 1
        gy = 2 * pos[:, :, :, 1] / max(h - 1, 1) - 1
        grid = torch.stack((gx, gy), -1).reshape(b * g, p * h, w, 2)
        sampled = F.grid_sample(v.reshape(b * g, c // g, h, w), grid.to(v.dtype), mode="bilinear",
                                padding_mode="border", align_corners=True)
        sampled = sampled.view(b, g, c // g, p, h, w) * modulation.to(sampled.dtype)
        aligned = self.kernel(sampled.permute(0, 1, 3, 2, 4, 5).reshape(b, g * p * (c // g), h, w))
        return aligned, flow


# ---------------------------------------------------------------- stages


class GuidedStage(nn.Module):
    """ASA + TdFA: ``F' = Conv(MGwinT(Conv(cat(F, FM, D))) + F)``."""

    def __init__(self, cfg: KGMgTConfig, scale: int) -> None:
        super().__init__()
        c = cfg.channels
        self.asa = AdaptiveSpatiotemporalAttention(c, cfg.asa_groups, cfg.asa_radius,
                                                   max(cfg.max_offset / 2 ** scale, 2.0))
        self.fuse = nn.Conv2d(3 * c, c, 3, padding=1)
        self.blocks = nn.ModuleList(MGwinBlock(c, cfg.heads, cfg.window, cfg.mlp_ratio, i) for i in range(cfg.depth))
        self.out = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, feat: torch.Tensor, ref: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        aligned, _ = self.asa(feat, ref)
        prior = torch.zeros_like(feat) if prior is None else prior
        y = self.fuse(torch.cat((feat, prior, aligned), dim=1)).permute(0, 2, 3, 1)
        for blk in self.blocks:
            y = blk(y)
        return self.out(y.permute(0, 3, 1, 2) + feat)


class KGMgTGenerator(nn.Module):
    """The shared-weight generator ``G``: a 3-scale U-Net of five guided stages."""

    def __init__(self, cfg: KGMgTConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.head = nn.Conv2d(2, c, 3, padding=1)      # shared by target and reference
        self.down = nn.ModuleList(nn.Conv2d(c, c, 4, stride=2, padding=1) for _ in range(2))
        self.ref_down = nn.ModuleList(nn.Conv2d(c, c, 4, stride=2, padding=1) for _ in range(2))
        self.up = nn.ModuleList(nn.ConvTranspose2d(c, c, 2, stride=2) for _ in range(2))
        self.skip = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for _ in range(2))
        self.stages = nn.ModuleList(GuidedStage(cfg, s) for s in (0, 1, 2, 1, 0))
        self.tail = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor, priors: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x, ref (B, 2, H, W)`` with ``H, W`` multiples of 4 -> residual ``(B, 2, H, W)`` and 5 stage maps."""
        pr = priors or [None] * 5
        r0 = F.leaky_relu(self.head(ref), 0.1)
        r1 = F.leaky_relu(self.ref_down[0](r0), 0.1)
        r2 = F.leaky_relu(self.ref_down[1](r1), 0.1)
        f = F.leaky_relu(self.head(x), 0.1)
        e0 = self.stages[0](f, r0, pr[0])
        e1 = self.stages[1](self.down[0](e0), r1, pr[1])
        e2 = self.stages[2](self.down[1](e1), r2, pr[2])
        d1 = self.stages[3](self.skip[0](torch.cat((self.up[0](e2), e1), 1)), r1, pr[3])
        d0 = self.stages[4](self.skip[1](torch.cat((self.up[1](d1), e0), 1)), r0, pr[4])
        return self.tail(d0), [e0, e1, e2, d1, d0]


class KGMgT(nn.Module):
    """Mentor/learner KGMgT with DC; see the module docstring."""

    def __init__(self, cfg: KGMgTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or KGMgTConfig.cpu_small()
        self.generator = KGMgTGenerator(self.cfg)
        if self.cfg.inputs == "view-shared":
            # A view-shared input is already close to the image: start as the identity (input + DC) and
            # learn the correction, instead of first unlearning a random residual.
            self.scale_residual(0.0)
        learn = self.cfg.dc_learnable and self.cfg.dc_mode == "soft"
        self.dc = DataConsistency(self.cfg.dc_mode, self.cfg.dc_noise_weight, learnable=learn)
        if self.cfg.dc_per_step:
            self.dc_input = DataConsistency(self.cfg.dc_mode, self.cfg.dc_noise_weight, learnable=learn)
            self.dc_mentor = DataConsistency(self.cfg.dc_mode, self.cfg.dc_noise_weight, learnable=learn)

    def dc_layers(self) -> list[DataConsistency]:
        """Every DC step of the network (one shared layer, or input / mentor / output)."""
        return [self.dc_input, self.dc_mentor, self.dc] if self.cfg.dc_per_step else [self.dc]

    @torch.no_grad()
    def scale_residual(self, factor: float) -> None:
        """Scale the generator's output layer: ``0`` makes the network input + DC (what it adds removed),
        a small factor starts fine-tuning near that while keeping the learned features."""
        self.generator.tail.weight.mul_(factor)
        self.generator.tail.bias.mul_(factor)

    def _dc(self, x: torch.Tensor, kspace, mask, maps, step: str = "output") -> torch.Tensor:
        if kspace is None:
            return x
        layer = self.dc
        if self.cfg.dc_per_step and step != "output":
            layer = self.dc_input if step == "input" else self.dc_mentor
        with torch.autocast(device_type=x.device.type, enabled=False):  # FFTs in float32
            return layer.forward_channels(x.float(), kspace, mask, maps).to(x.dtype)

    def forward(self, target: torch.Tensor, ref_mentor: torch.Tensor, ref_learner: torch.Tensor,
                kspace: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct frame ``t``.

        Args:
            target, ref_mentor, ref_learner: ``(B, 2, H, W)`` frames ``t``, ``t-1``
                and ``t+1`` (causal: ``t``, ``t-1``, ``t-2``), zero-filled or
                view-shared SENSE images as ``cfg.inputs`` says.
            kspace: measured k-space of frame ``t``, ``(B, C, H, W)`` complex
                (``C = 1`` and ``maps=None`` for single-coil), same scaling as
                the images; ``None`` skips DC.
            mask: sampling mask (see ``models.operators.expand_mask``).
            maps: coil maps ``(B, C, H, W)`` complex with ``sum |S|^2 = 1``.
        Returns:
            ``(B, 2, H, W)`` reconstruction of frame ``t``.
        """
        h, w = target.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4

        def pad(z: torch.Tensor) -> torch.Tensor:
            return F.pad(z, (0, pw, 0, ph), mode="replicate") if (ph or pw) else z

        rm, rl = pad(ref_mentor), pad(ref_learner)
        x = self._dc(target, kspace, mask, maps, "input") if self.cfg.dc_on_input else target
        for _ in range(self.cfg.cascades):
            res1, feats = self.generator(pad(x), rm)
            kg = x + res1[..., :h, :w]
            if self.cfg.dc_after_mentor:
                kg = self._dc(kg, kspace, mask, maps, "mentor")
            res2, _ = self.generator(pad(kg), rl, feats)
            x = self._dc(kg + res2[..., :h, :w], kspace, mask, maps)
        return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["KGMgTConfig", "KGMgT", "KGMgTGenerator", "AdaptiveSpatiotemporalAttention", "MGwinBlock",
           "WindowAttention", "count_parameters", "to_channels", "from_channels"]
