"""The ISMRMRD XML header a scanner sends before its readouts.

Built with ``ismrmrd.xsd`` classes (keyword arguments only in ismrmrd >=
1.15) so the header serialises with ``header.toXML()`` and parses back with
``ismrmrd.xsd.CreateFromDocument``.
"""
from __future__ import annotations

import datetime as _dt

import ismrmrd.xsd as x
from xsdata.models.datatype import XmlDate, XmlTime

from pipelines.protocol import ISMRMRD_HEADER_VERSION

from .scan import Scan

GYROMAGNETIC_MHZ_PER_T = 42.577478


def _limit(maximum: int, center: int = 0) -> x.limitType:
    return x.limitType(minimum=0, maximum=int(maximum), center=int(center))


def nominal_tr_ms(scan: Scan, accel: float = 1.0) -> float:
    """Readout repetition time: the scan's own TR, else one frame's lines spread over ``frame_ms``."""
    if scan.tr_ms:
        return float(scan.tr_ms)
    lines = max(1.0, scan.ny / max(accel, 1.0))
    return float(scan.frame_ms / lines)


def make_header(scan: Scan, *, accel: float = 1.0, calib_lines: int = 0, n_contrasts: int = 1,
                calibration_mode: str = "embedded", tr_ms: float | None = None,
                segments: int = 1) -> x.ismrmrdHeader:
    """The ISMRMRD header describing ``scan`` as acquired.

    - encodedSpace: ``kx_encoded x ky x 1`` with the readout FOV multiplied by
      the oversampling; reconSpace: the recon matrix and FOV.
    - encodingLimits: readout (``kspace_encoding_step_0``), phase encode
      (``kspace_encoding_step_1``, centre ``ky // 2`` or the scan's own
      centre; minimum/maximum the encoded lines when zero-padded columns are
      never sent), slice, contrast (``n_contrasts``), phase or repetition
      (``frames - 1`` on the scan's time dimension, 0 on the other).
    - parallelImaging when ``accel > 1``: the in-plane acceleration factor
      rounded to an integer (ISMRMRD stores integers; the achieved,
      fractional value is in userParameters ``achieved_acceleration``) and
      the calibration mode (``embedded``: calibration lines are also imaging
      lines) with ``calib_lines`` in userParameters.
    - sequenceParameters: TR (nominal readout spacing), TE, flip angle,
      ``sequence_type`` bSSFP-like ``TrueFISP`` for cine, else ``Flash``.
    - ``segments``: heartbeats per frame of a segmented (gated) acquisition
      (the ``segment`` limit).
    """
    nx_recon = scan.recon_shape[1]
    ny = scan.ny
    fov_x, fov_y, fov_z = scan.fov_mm
    os_ = scan.readout_oversampling
    ky_c = scan.ky_center if scan.ky_center is not None else ny // 2
    ky_min, ky_max = (scan.encoded_lines[0], scan.encoded_lines[1] - 1) if scan.encoded_lines else (0, ny - 1)
    frames_max = scan.frames - 1
    limits = x.encodingLimitsType(
        kspace_encoding_step_0=_limit(scan.kx_encoded - 1, scan.kx_encoded // 2),
        kspace_encoding_step_1=x.limitType(minimum=int(ky_min), maximum=int(ky_max), center=int(ky_c)),
        kspace_encoding_step_2=_limit(0),
        average=_limit(0),
        slice=_limit(scan.slices - 1),
        contrast=_limit(max(n_contrasts, scan.contrast + 1) - 1),
        phase=_limit(frames_max if scan.time_dimension == "phase" else 0),
        repetition=_limit(frames_max if scan.time_dimension == "repetition" else 0),
        set=_limit(0),
        segment=_limit(max(segments, 1) - 1),
    )
    parallel = None
    if accel > 1:
        parallel = x.parallelImagingType(
            accelerationFactor=x.accelerationFactorType(kspace_encoding_step_1=max(1, int(round(accel))), kspace_encoding_step_2=1),
            calibrationMode=x.calibrationModeType(calibration_mode),
            interleavingDimension=x.interleavingDimensionType.PHASE if scan.time_dimension == "phase" else x.interleavingDimensionType.REPETITION,
        )
    encoding = x.encodingType(
        encodedSpace=x.encodingSpaceType(
            matrixSize=x.matrixSizeType(x=scan.kx_encoded, y=ny, z=1),
            fieldOfView_mm=x.fieldOfViewMm(x=fov_x * os_, y=fov_y, z=fov_z),
        ),
        reconSpace=x.encodingSpaceType(
            matrixSize=x.matrixSizeType(x=nx_recon, y=scan.recon_shape[0], z=1),
            fieldOfView_mm=x.fieldOfViewMm(x=fov_x, y=fov_y, z=fov_z),
        ),
        encodingLimits=limits,
        trajectory=x.trajectoryType.CARTESIAN,
        parallelImaging=parallel,
    )
    tr = tr_ms if tr_ms is not None else nominal_tr_ms(scan, accel)
    is_cine = "cine" in scan.name.lower() or scan.frames > 1
    seq = x.sequenceParametersType(
        TR=[round(tr, 4)],
        TE=[round(scan.te_ms if scan.te_ms else tr / 2, 4)],
        flipAngle_deg=[scan.flip_angle_deg if scan.flip_angle_deg else (50.0 if is_cine else 15.0)],
        sequence_type="TrueFISP" if is_cine else "Flash",
    )
    now = _dt.datetime.now()
    user = x.userParametersType(
        userParameterLong=[
            x.userParameterLongType(name="calib_lines", value=int(calib_lines)),
            x.userParameterLongType(name="frames", value=int(scan.frames)),
        ],
        userParameterDouble=[
            x.userParameterDoubleType(name="achieved_acceleration", value=float(accel)),
            x.userParameterDoubleType(name="frame_ms", value=float(scan.frame_ms)),
        ],
        userParameterString=[x.userParameterStringType(name="time_dimension", value=scan.time_dimension)],
    )
    return x.ismrmrdHeader(
        version=ISMRMRD_HEADER_VERSION,  # Gadgetron refuses headers of other versions
        subjectInformation=x.subjectInformationType(patientID="SIMULATED", patientName="streamrecon^phantom"),
        studyInformation=x.studyInformationType(studyDescription="streamrecon simulated exam"),
        measurementInformation=x.measurementInformationType(
            measurementID=scan.measurement_id,
            seriesDate=XmlDate(now.year, now.month, now.day),
            seriesTime=XmlTime(now.hour, now.minute, now.second),
            patientPosition=x.patientPositionType.HFS,
            protocolName=scan.protocol_name or scan.name or "streamrecon",
            frameOfReferenceUID=scan.frame_of_reference_uid,
        ),
        acquisitionSystemInformation=x.acquisitionSystemInformationType(
            systemVendor="streamrecon",
            systemModel="simulator",
            systemFieldStrength_T=float(scan.field_strength_t),
            relativeReceiverNoiseBandwidth=0.793,
            receiverChannels=int(scan.coils),
            institutionName="streamrecon",
        ),
        experimentalConditions=x.experimentalConditionsType(
            H1resonanceFrequency_Hz=int(round(GYROMAGNETIC_MHZ_PER_T * 1e6 * scan.field_strength_t)),
        ),
        encoding=[encoding],
        sequenceParameters=seq,
        userParameters=user,
    )


__all__ = ["make_header", "nominal_tr_ms"]
