"""Built-in numerical phantoms (NumPy only), so nothing needs a download.

- :func:`cardiac_cine`: a beating-heart short-axis bSSFP-like cine.
- :func:`brain_pair`: one synthetic brain in two co-registered contrasts.

Geometry is drawn analytically with anti-aliased (about one pixel wide)
tissue boundaries, so the phantoms have no staircase edges that would make
k-space unrealistically heavy at high frequencies. Coordinates are
normalised to [-1, 1) over each axis, rows (y, phase encode) first.
"""
from __future__ import annotations

import numpy as np

from .synthetic import centred_grid, cardiac_waveform, smooth_phase


def _soft(signed_dist: np.ndarray, width: float) -> np.ndarray:
    """Smooth inside-indicator from a signed distance (negative inside)."""
    return 0.5 * (1.0 - np.tanh(signed_dist / width))


def _ellipse_sd(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact for circles)."""
    y, x = yy - cy, xx - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        y, x = c * y - s * x, s * y + c * x
    rho = np.sqrt((y / ry) ** 2 + (x / rx) ** 2)
    return (rho - 1.0) * min(ry, rx)


def _paint(image: np.ndarray, weight: np.ndarray, value: float | np.ndarray) -> np.ndarray:
    return image * (1.0 - weight) + value * weight


def _texture(ny: int, nx: int, rng: np.random.Generator, scale_px: float, strength: float) -> np.ndarray:
    """Multiplicative band-limited random texture ``1 + strength * n`` (n of unit std)."""
    noise = rng.normal(size=(ny, nx))
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    filt = np.exp(-0.5 * (ky ** 2 + kx ** 2) * (2 * np.pi * scale_px) ** 2)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(noise) * filt))
    smooth /= max(smooth.std(), 1e-12)
    return 1.0 + strength * smooth


def cardiac_cine(ny: int = 128, nx: int = 128, frames: int = 20, *, seed: int = 0, heart_scale: float = 1.0,
                 phase_rad: float = 0.8 * np.pi) -> np.ndarray:
    """Short-axis cine through a beating heart, ``(frames, ny, nx)`` complex64.

    Tissues (bSSFP-like magnitudes): bright LV and RV blood pools, a darker
    myocardial ring with two papillary muscles, chest wall with a
    subcutaneous fat layer and muscle, dark lungs, liver, a descending aorta
    and the spine. Frame ``t`` is cycle fraction ``t / frames`` after the R
    wave; the LV endocardial radius shrinks by about a third at end-systole
    (ejection fraction near 55 %) while the myocardial area is conserved,
    so the wall thickens; the RV contracts too and the heart shifts slightly.
    A smooth random texture (a few per cent) and a static smooth phase of at
    most ``phase_rad`` are applied. ``heart_scale`` shrinks the heart (for
    slices towards the apex). Magnitude maximum is 1.
    """
    rng = np.random.default_rng(seed)
    yy, xx = centred_grid(ny, nx)
    w = 1.2 / min(ny, nx)  # edge width: about 0.6 pixel each side
    jit = lambda s=0.04: 1.0 + rng.uniform(-s, s)  # noqa: E731  (small per-seed anatomical variation)
    # Static anatomy.
    body = (0.06 * jit(), 0.0, 0.66 * jit(), 0.88 * jit())
    lung_l = (-0.02, -0.50, 0.38 * jit(), 0.26 * jit(), 0.25)
    lung_r = (0.02, 0.55, 0.40 * jit(), 0.25 * jit(), -0.3)
    liver = (0.42, -0.38, 0.28 * jit(), 0.42 * jit(), 0.3)
    aorta = (0.36, 0.18, 0.055, 0.055)
    spine = (0.56, 0.02, 0.11, 0.13)
    cord = (0.56, 0.02, 0.035, 0.035)
    # Heart at end-diastole.
    hs = heart_scale * jit(0.05)
    lv_c = (-0.02 + rng.uniform(-0.03, 0.03), 0.10 + rng.uniform(-0.03, 0.03))
    r_endo_ed, r_epi_ed = 0.19 * hs, 0.265 * hs
    rv_off, rv_ry, rv_rx = 0.30 * hs, 0.23 * hs, 0.15 * hs
    pap_angles = (np.deg2rad(40 + rng.uniform(-10, 10)), np.deg2rad(150 + rng.uniform(-10, 10)))

    tex = _texture(ny, nx, rng, scale_px=min(ny, nx) / 40, strength=0.05)
    phase = smooth_phase((ny, nx), seed=seed + 1000, max_rad=phase_rad)

    static = np.zeros((ny, nx))
    body_sd = _ellipse_sd(yy, xx, *body)
    static = _paint(static, _soft(body_sd, w), 0.85)  # subcutaneous fat
    static = _paint(static, _soft(body_sd + 0.045, w), 0.30)  # chest-wall muscle
    static = _paint(static, _soft(body_sd + 0.085, w), 0.38)  # mediastinal soft tissue
    static = _paint(static, _soft(_ellipse_sd(yy, xx, *liver), w), 0.36)
    static = _paint(static, _soft(_ellipse_sd(yy, xx, *lung_l), w), 0.04)
    static = _paint(static, _soft(_ellipse_sd(yy, xx, *lung_r), w), 0.04)
    static = _paint(static, _soft(_ellipse_sd(yy, xx, *spine), w), 0.25)
    static = _paint(static, _soft(_ellipse_sd(yy, xx, *cord), w), 0.75)
    static = _paint(static, _soft(_ellipse_sd(yy, xx, *aorta), w), 0.95)

    out = np.empty((frames, ny, nx), dtype=np.complex64)
    for t in range(frames):
        c = float(cardiac_waveform(t / frames))
        r_endo = r_endo_ed * (1.0 - 0.33 * c)
        r_epi = np.sqrt(r_endo ** 2 + r_epi_ed ** 2 - r_endo_ed ** 2)  # myocardial area conserved
        cy, cx = lv_c[0] + 0.012 * c, lv_c[1] - 0.015 * c
        img = static.copy()
        rv_scale = 1.0 - 0.22 * c
        rv_cy, rv_cx = cy - 0.05 * hs, cx - rv_off * (1.0 - 0.12 * c)
        # Pericardial fat pad, then RV (blood) and the LV myocardium over it.
        img = _paint(img, _soft(_ellipse_sd(yy, xx, cy, cx - 0.10 * hs, r_epi + 0.12 * hs, r_epi + 0.20 * hs), w), 0.42)
        rv_outer = _ellipse_sd(yy, xx, rv_cy, rv_cx, rv_ry * rv_scale + 0.02, rv_rx * rv_scale + 0.02, 0.35)
        img = _paint(img, _soft(rv_outer, w), 0.30)  # RV free wall
        rv_blood = _ellipse_sd(yy, xx, rv_cy, rv_cx, rv_ry * rv_scale, rv_rx * rv_scale, 0.35)
        img = _paint(img, _soft(rv_blood, w), 0.92)
        epi = np.hypot(yy - cy, xx - cx) - r_epi
        img = _paint(img, _soft(epi, w), 0.30)  # myocardium (septum included)
        endo = np.hypot(yy - cy, xx - cx) - r_endo
        img = _paint(img, _soft(endo, w), 1.0)  # LV blood pool
        for a in pap_angles:
            py, px = cy + 0.78 * r_endo * np.sin(a), cx + 0.78 * r_endo * np.cos(a)
            rp = 0.11 * r_endo_ed * (1.0 + 0.3 * c)
            img = _paint(img, _soft(np.hypot(yy - py, xx - px) - rp, w), 0.32)
        out[t] = (img * tex).astype(np.float32)
    out /= max(np.abs(out).max(), 1e-12)
    return (out * np.exp(1j * phase)[None]).astype(np.complex64)


def _brain_geometry(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Soft tissue-membership maps of one synthetic axial brain slice."""
    yy, xx = centred_grid(n, n)
    w = 1.2 / n
    j = lambda s=0.04: 1.0 + rng.uniform(-s, s)  # noqa: E731
    head = (0.0, 0.0, 0.86 * j(), 0.70 * j())
    head_sd = _ellipse_sd(yy, xx, *head)
    theta = np.arctan2(yy / head[2], xx / head[3])
    # Brain surface: slowly varying; grey/white boundary: folded (gyri).
    surf = 1.0 + sum(0.015 * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    gyri = sum(rng.uniform(0.4, 1.0) * np.abs(np.sin(k * theta / 2 + rng.uniform(0, np.pi))) for k in (17, 23))
    rho = np.sqrt((yy / head[2]) ** 2 + (xx / head[3]) ** 2)
    scale = min(head[2], head[3])
    brain_sd = (rho - 0.86 * surf) * scale
    wm_sd = (rho - (0.86 * surf - 0.07 - 0.05 * gyri)) * scale
    vent_l = _ellipse_sd(yy, xx, -0.06, -0.09, 0.26 * j(), 0.055 * j(), 0.15)
    vent_r = _ellipse_sd(yy, xx, -0.06, 0.09, 0.26 * j(), 0.055 * j(), -0.15)
    third = _ellipse_sd(yy, xx, 0.16, 0.0, 0.07, 0.015)
    thal_l = _ellipse_sd(yy, xx, 0.15, -0.11, 0.12, 0.08)
    thal_r = _ellipse_sd(yy, xx, 0.15, 0.11, 0.12, 0.08)
    caud_l = _ellipse_sd(yy, xx, -0.16, -0.17, 0.09, 0.05, 0.3)
    caud_r = _ellipse_sd(yy, xx, -0.16, 0.17, 0.09, 0.05, -0.3)
    falx = np.maximum(np.abs(xx) - 0.012, np.abs(yy) - 0.78 * head[2]) * (yy < -0.35 * head[2]) + 1.0 * (yy >= -0.35 * head[2])
    ang = rng.uniform(0, 2 * np.pi)
    lesion = np.hypot(yy - 0.42 * np.sin(ang) * head[2], xx - 0.42 * np.cos(ang) * head[3]) - 0.05 * j(0.2)
    return {
        "scalp": _soft(head_sd, w),
        "skull": _soft(head_sd + 0.035, w),
        "csf": _soft(head_sd + 0.07, w),
        "gm": _soft(brain_sd, w),
        "wm": _soft(wm_sd, w),
        "deep": np.maximum.reduce([_soft(s, w) for s in (thal_l, thal_r, caud_l, caud_r)]),
        "ventricles": np.maximum.reduce([_soft(s, w) for s in (vent_l, vent_r, third)]),
        "falx": _soft(falx, w) * _soft(brain_sd, w),
        "lesion": _soft(lesion, w) * _soft(wm_sd, w),
    }


# Relative magnitudes of each tissue in a T1-weighted and a T2-weighted scan.
_T1W = {"scalp": 1.0, "skull": 0.04, "csf": 0.12, "gm": 0.58, "wm": 0.92, "deep": 0.70, "ventricles": 0.10, "falx": 0.12, "lesion": 0.45}
_T2W = {"scalp": 0.55, "skull": 0.04, "csf": 1.0, "gm": 0.72, "wm": 0.42, "deep": 0.55, "ventricles": 1.0, "falx": 0.95, "lesion": 0.95}


def brain_pair(n: int = 128, *, seed: int = 0, phase_rad: float = 0.5 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic brain slice in two co-registered contrasts.

    Returns ``(reference, target)``, each ``(n, n)`` complex64 with
    magnitude maximum 1: a T1-weighted reference (bright white matter, dark
    CSF) and a T2-weighted target (bright CSF, grey brighter than white) of
    the same geometry: scalp, skull, CSF, folded cortex, white matter, deep
    grey nuclei, lateral ventricles, falx and a small white-matter lesion
    that is conspicuous only in the T2 contrast (so the target carries
    information the reference lacks). The two share the tissue texture but
    have independent smooth phases (separate scans).
    """
    rng = np.random.default_rng(seed)
    geo = _brain_geometry(n, rng)
    tex = _texture(n, n, rng, scale_px=n / 48, strength=0.04)
    order = ("scalp", "skull", "csf", "gm", "wm", "deep", "ventricles", "falx", "lesion")
    images = []
    for k, table in enumerate((_T1W, _T2W)):
        img = np.zeros((n, n))
        for name in order:
            img = _paint(img, geo[name], table[name])
        img = img * tex
        img /= max(img.max(), 1e-12)
        phase = smooth_phase((n, n), seed=seed * 7 + 100 + k, max_rad=phase_rad)
        images.append((img * np.exp(1j * phase)).astype(np.complex64))
    return images[0], images[1]


__all__ = ["cardiac_cine", "brain_pair"]
