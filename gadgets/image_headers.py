"""Building ``ismrmrd.Image`` objects a scanner can file and display.

Contract 3 of docs/design.md: matrix size, field of view, position and
direction vectors, slice/phase/contrast/repetition/set counters,
acquisition and physiology time stamps, image and series indices, image
type and meta. Position, directions, time stamps and counters come from the
frame's reference acquisition (the line nearest the k-space centre), as
Gadgetron's own image finishing does.
"""
from __future__ import annotations

from typing import Any

import ismrmrd
import numpy as np

from .frames import Frame
from .samples import LATE_META_KEY, META_KEY, late_readouts, zeroed_lines


def recon_geometry(header: Any) -> tuple[tuple[int, int], tuple[float, float, float]]:
    """Recon matrix ``(ny, nx)`` and field of view ``(x, y, z)`` in mm from the ISMRMRD header."""
    recon = header.encoding[0].reconSpace
    fov = recon.fieldOfView_mm
    return (int(recon.matrixSize.y), int(recon.matrixSize.x)), (float(fov.x), float(fov.y), float(fov.z))


def image_from_frame(frame: Frame, pixels: np.ndarray, header: Any, *, series_index: int = 0,
                     image_type: int = ismrmrd.IMTYPE_COMPLEX, meta: dict[str, Any] | None = None) -> ismrmrd.Image:
    """An image of ``pixels`` (``(ny, nx)``, on the recon matrix) with the frame's header fields."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"image pixels must be (ny, nx), got {pixels.shape}")
    _, fov = recon_geometry(header)
    image = ismrmrd.Image.from_array(pixels, acquisition=frame.reference_header, transpose=False,
                                     image_type=image_type, image_series_index=series_index,
                                     field_of_view=fov)
    # Acquisition time of the frame = its last line (when the data existed),
    # not the centre line's.
    image.acquisition_time_stamp = frame.last_arrival_header().acquisition_time_stamp
    image.meta = {**(meta or {}), "Acceleration": f"{frame.acceleration:.2f}"}
    zeroed = zeroed_lines(frame.headers, frame.calibration_headers)
    if zeroed:
        image.meta[META_KEY] = str(zeroed)
    late = late_readouts(frame.headers)
    if late:
        image.meta[LATE_META_KEY] = str(late)
    return image
