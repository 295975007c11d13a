"""Image emission: what leaves the chain for the scanner.

Complex reconstructions become magnitude images (float, or 16-bit
integers scaled as scanners expect), numbered per output series in arrival
order, with ``ImageComment`` and ``ImageSeriesDescription`` meta built from
what the reconstruction recorded (method, model, acceleration).

Two meta conventions: ``gadgetron`` (the default: what Gadgetron's own
image finishing sends) and ``fire`` (what python-ismrmrd-server's modules
send and Siemens FIRE/OpenRecon scanners read: ``DataRole``,
``WindowCenter``/``WindowWidth``, ``SeriesDescription``,
``SequenceDescriptionAdditional``, ``ImageProcessingHistory``,
``Keep_image_geometry`` and the row/column directions).
"""
from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np
from ismrmrd.image import get_data_type_from_dtype

from . import properties
from .errors import reports_errors

log = logging.getLogger(__name__)

UINT16_MAX_VALUE = 4095  # 12-bit display range most scanners assume
# int16 (FIRE): the first image of a series maps to this, leaving a quarter of
# the 12-bit range as headroom for brighter later frames (a stream cannot see
# the whole series before its first image leaves).
INT16_FIRST_PEAK = 3071
OUTPUTS = ("float", "uint16", "int16")
META_CONVENTIONS = ("gadgetron", "fire")


def magnitude_image(image: ismrmrd.Image, data: np.ndarray) -> ismrmrd.Image:
    """A copy of ``image``'s header and meta around new magnitude pixels ``data`` (``(ny, nx)``)."""
    data = np.asarray(data)
    head = ismrmrd.ImageHeader.from_buffer_copy(image.getHead())
    head.data_type = get_data_type_from_dtype(data.dtype)
    head.channels = 1
    head.matrix_size[:] = (data.shape[-1], data.shape[-2], 1)
    head.image_type = ismrmrd.IMTYPE_MAGNITUDE
    # Image(head=...) sizes its pixel buffer from the header, so the header
    # must describe the new pixels before the image is made.
    out = ismrmrd.Image(head=head)
    out.data[:] = data.reshape(1, 1, *data.shape[-2:])
    out.meta = dict(image.meta)
    return out


def fire_meta(meta: dict[str, Any], image: ismrmrd.Image, series_description: str,
              window: tuple[float, float] | None) -> dict[str, Any]:
    """``meta`` with the keys python-ismrmrd-server's modules set for FIRE/OpenRecon scanners."""
    out = dict(meta)
    out["DataRole"] = "Image"
    out["ImageProcessingHistory"] = ["FIRE", "PYTHON", "STREAMRECON"]
    out["SeriesDescription"] = series_description
    out["SequenceDescriptionAdditional"] = "streamrecon"
    out["Keep_image_geometry"] = 1
    if window is not None:
        out["WindowCenter"] = f"{window[0]:g}"
        out["WindowWidth"] = f"{window[1]:g}"
    out.setdefault("ImageRowDir", [f"{v:.18f}" for v in image.read_dir])
    out.setdefault("ImageColumnDir", [f"{v:.18f}" for v in image.phase_dir])
    return out


def describe(meta: dict[str, Any]) -> str:
    parts = [str(meta.get("Model") or meta.get("ReconMethod") or "reconstruction")]
    if meta.get("Acceleration"):
        parts.append(f"R={float(meta['Acceleration']):.1f}")
    if meta.get("Fallback"):
        # say which image stands in, so a viewer (and DICOM ImageComments) can tell a fallback frame apart
        shown = f" ({meta['ReconMethod']})" if meta.get("Model") and meta.get("ReconMethod") else ""
        parts.append(f"fallback{shown}: {meta['Fallback']}")
    return " | ".join(parts)


@reports_errors
def emit_images(connection: Any) -> None:
    """Gadget: complex or magnitude images in, scanner-ready magnitude images out.

    Properties: ``output`` ("float", "uint16" or "int16", default "float"),
    ``scale`` (integer outputs' scale factor; default: chosen per series
    from its first image so its maximum maps to 4095 (uint16) or 3071
    (int16, headroom for brighter frames), then kept so the series'
    brightness is consistent), ``series_description`` (default from meta),
    ``meta`` ("gadgetron" or "fire", default "gadgetron"; module docstring).
    """
    cfg = connection.config
    output = properties.get(cfg, "output", "float").lower()
    if output not in OUTPUTS:
        raise ValueError(f"property 'output' must be one of {', '.join(OUTPUTS)}, not {output!r}")
    convention = properties.get(cfg, "meta", "gadgetron").lower()
    if convention not in META_CONVENTIONS:
        raise ValueError(f"property 'meta' must be one of {', '.join(META_CONVENTIONS)}, not {convention!r}")
    fixed_scale = properties.get(cfg, "scale", 0.0)
    description = properties.get(cfg, "series_description", "")
    next_index: dict[int, int] = {}
    scales: dict[int, float] = {}
    windows: dict[int, tuple[float, float]] = {}
    for item in connection:
        if not isinstance(item, ismrmrd.Image):
            connection.send(item)
            continue
        series = int(item.image_series_index)
        pixels = np.abs(np.asarray(item.data)).reshape(item.data.shape[-2:]).astype(np.float32)
        if output == "uint16":
            if series not in scales:
                scales[series] = fixed_scale or UINT16_MAX_VALUE / max(float(pixels.max()), 1e-12)
            pixels = np.clip(np.rint(pixels * scales[series]), 0, 65535).astype(np.uint16)
        elif output == "int16":
            if series not in scales:
                scales[series] = fixed_scale or INT16_FIRST_PEAK / max(float(pixels.max()), 1e-12)
            pixels = np.clip(np.rint(pixels * scales[series]), 0, UINT16_MAX_VALUE).astype(np.int16)
        if series not in windows:
            # One window per series, from its first image, so a cine does not flicker.
            peak = float(pixels.max()) if pixels.size else 0.0
            windows[series] = (peak / 2, max(peak, 1e-12))
        image = magnitude_image(item, pixels)
        next_index[series] = next_index.get(series, 0) + 1
        image.image_index = next_index[series]
        meta = image.meta
        meta["ImageComment"] = describe(meta)
        meta["ImageSeriesDescription"] = description or str(meta.get("Model") or meta.get("ReconMethod") or "recon")
        if output != "float":
            meta["ScaleFactor"] = f"{scales[series]:.6g}"
        if convention == "fire":
            meta = fire_meta(meta, image, meta["ImageSeriesDescription"],
                             windows[series])
        image.meta = meta
        connection.send(image)
