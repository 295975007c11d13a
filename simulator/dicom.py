"""Received images as MR DICOM files (pydicom, an optional dependency).

One file per image, in the classic MR Image IOD: patient, study, series,
frame of reference, equipment, image plane and MR image modules with
their required attributes. Identity (patient, study) comes from the source's
ISMRMRD header when the source had one; simulated sources say so.

Pixel values: each series gets one scale from all its images (the largest
magnitude maps to 4095), so a cine keeps its relative brightness and no
value wraps; BitsStored is 12, which every stored value fits.

Geometry: PixelSpacing from the image header's field of view, else the
source header's recon field of view, else square pixels (1 mm): a
receiver never sees stretched anatomy. A gated cine carries TriggerTime (the
source's own trigger times when it had them, else frame x frame duration),
CardiacNumberOfImages, the R-R interval (NominalInterval, HeartRate) and
ScanOptions ``CG``; a real-time cine (no trigger: the IOD then forbids
TriggerTime) carries TemporalPositionIdentifier, NumberOfTemporalPositions
and TemporalResolution.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import ismrmrd
import ismrmrd.xsd
import numpy as np

from .acquire import frame_key
from .results import image_array
from .scan import Scan, dicom_uid

BITS_STORED = 12
MAX_STORED = (1 << BITS_STORED) - 1


def _text(value, default: str = "") -> str:
    if value is None:
        return default
    return str(getattr(value, "value", value))


def _dicom_date(value) -> str:
    if value is None:
        return ""
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def _dicom_time(value) -> str:
    if value is None:
        return ""
    return f"{value.hour:02d}{value.minute:02d}{int(value.second):02d}"


def identity(scan: Scan, header: ismrmrd.xsd.ismrmrdHeader | None) -> dict:
    """Patient, study and equipment attributes from the source header (or what the source is)."""
    subj = header.subjectInformation if header is not None else None
    study = header.studyInformation if header is not None else None
    meas = header.measurementInformation if header is not None else None
    system = header.acquisitionSystemInformation if header is not None else None
    simulated = scan.coil_maps is not None  # measured data never knows its true coil maps
    now = _dt.datetime.now()
    out = {
        "PatientName": _text(subj.patientName if subj else None, "streamrecon^phantom" if simulated else ""),
        "PatientID": _text(subj.patientID if subj else None, "SIMULATED" if simulated else scan.name),
        "PatientBirthDate": _dicom_date(subj.patientBirthdate if subj else None),
        "PatientSex": {"M": "M", "F": "F", "O": "O"}.get(_text(subj.patientGender if subj else None)[:1].upper(), ""),
        "StudyInstanceUID": _text(study.studyInstanceUID if study else None) or dicom_uid(scan.frame_of_reference_uid, 0, "study"),
        "StudyDate": _dicom_date(study.studyDate if study else None) or now.strftime("%Y%m%d"),
        "StudyTime": _dicom_time(study.studyTime if study else None) or now.strftime("%H%M%S"),
        "StudyID": (_text(study.studyID if study else None) or scan.measurement_id)[:16],
        "AccessionNumber": _text(study.accessionNumber if study else None)[:16],
        "ReferringPhysicianName": _text(study.referringPhysicianName if study else None),
        "StudyDescription": _text(study.studyDescription if study else None)[:64],
        "ProtocolName": _text(meas.protocolName if meas else None, scan.protocol_name or scan.name)[:64],
        "PatientPosition": _text(meas.patientPosition if meas else None, "HFS"),
        "Manufacturer": _text(system.systemVendor if system else None, "streamrecon" if simulated else ""),
        "ManufacturerModelName": _text(system.systemModel if system else None),
        "InstitutionName": _text(system.institutionName if system else None),
        "MagneticFieldStrength": float(system.systemFieldStrength_T) if system and system.systemFieldStrength_T else scan.field_strength_t,
    }
    seq = header.sequenceParameters if header is not None else None
    out["RepetitionTime"] = float(seq.TR[0]) if seq is not None and seq.TR else None
    out["EchoTime"] = float(seq.TE[0]) if seq is not None and seq.TE else None
    return out


def _meta(image: ismrmrd.Image, key: str) -> str:
    try:
        value = image.meta.get(key)
    except Exception:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def series_scales(images: list[ismrmrd.Image]) -> dict[int, float]:
    """Per series: the factor that maps its largest magnitude over all its images to :data:`MAX_STORED`."""
    peak: dict[int, float] = {}
    for im in images:
        s = int(im.image_series_index)
        peak[s] = max(peak.get(s, 0.0), float(np.abs(np.asarray(im.data)).max()))
    return {s: MAX_STORED / v if v > 0 else 1.0 for s, v in peak.items()}


def pixel_spacing(image: ismrmrd.Image, shape: tuple[int, int],
                  header: ismrmrd.xsd.ismrmrdHeader | None = None) -> tuple[float, float, float]:
    """``(row spacing dy, column spacing dx, slice thickness)`` in mm for an image of ``shape`` (module docstring)."""
    fov = [float(v) for v in image.field_of_view]
    if fov[0] <= 0 or fov[1] <= 0:
        recon = header.encoding[0].reconSpace.fieldOfView_mm if header is not None and header.encoding else None
        fov = [float(recon.x), float(recon.y), float(recon.z)] if recon is not None and recon.x > 0 and recon.y > 0 \
            else [float(shape[1]), float(shape[0]), fov[2]]
    return fov[1] / shape[0], fov[0] / shape[1], fov[2] if fov[2] > 0 else 1.0


def cardiac_attributes(scan: Scan, frame: int) -> dict:
    """TriggerTime and the cardiac fields of a cine frame (module docstring); {} for a single frame."""
    if scan.frames < 2:
        return {}
    trig = getattr(scan, "trigger_times_ms", None)
    when = float(trig[frame]) if trig is not None and frame < len(trig) else frame * float(scan.frame_ms)
    if scan.time_dimension == "phase":
        rr = scan.frames * float(scan.frame_ms)
        return {"TriggerTime": round(when, 3), "CardiacNumberOfImages": scan.frames, "NominalInterval": round(rr),
                "HeartRate": round(60000.0 / rr) if rr > 0 else 0}
    # Real time: no trigger (the MR Image IOD allows TriggerTime only with cardiac gating); the
    # frame's place in time is its temporal position and the series' temporal resolution.
    return {"TemporalPositionIdentifier": frame + 1, "NumberOfTemporalPositions": scan.frames,
            "TemporalResolution": round(float(scan.frame_ms), 3)}


def save_dicom(out_dir: Path, images: list[ismrmrd.Image], scans: list[Scan],
               header: ismrmrd.xsd.ismrmrdHeader | None = None) -> int:
    """One MR DICOM file per image into ``out_dir``; returns the count written."""
    # pydicom is optional (pip install 'streamrecon[dicom]'): imported only when DICOM is written
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    out_dir.mkdir(parents=True, exist_ok=True)
    scan = scans[-1]
    who = identity(scan, header)
    scales = series_scales(images)
    series_uids: dict[int, str] = {}
    instance: dict[int, int] = {}
    count = 0
    for im in sorted(images, key=lambda i: (int(i.image_series_index), frame_key(i))):
        series = int(im.image_series_index)
        series_uids.setdefault(series, generate_uid())
        instance[series] = instance.get(series, 0) + 1
        arr = np.abs(image_array(im)).astype(np.float64)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "Manufacturer",
                    "PatientPosition"):
            setattr(ds, key, who[key])
        for key in ("StudyDescription", "ProtocolName", "ManufacturerModelName", "InstitutionName"):
            if who[key]:
                setattr(ds, key, who[key])
        ds.MagneticFieldStrength = who["MagneticFieldStrength"]
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uids[series], series + 1
        description = _meta(im, "ImageSeriesDescription") or f"streamrecon series {series}"
        ds.SeriesDescription = description[:64]
        comment = _meta(im, "ImageComment")
        if comment:
            ds.ImageComments = comment[:10240]
        fallback = _meta(im, "Fallback")
        if fallback:  # a classical image standing in for the model's: said where a PACS viewer shows it
            model = _meta(im, "Model") or "the model"
            ds.DerivationDescription = (f"FALLBACK: {_meta(im, 'ReconMethod') or 'classical image'} in place of "
                                        f"{model}: {fallback}")[:1024]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = scan.frame_of_reference_uid, ""
        ds.InstanceNumber = instance[series]
        ds.ContentDate, ds.ContentTime = who["StudyDate"], who["StudyTime"]
        ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
        ds.Laterality = ""  # type 2C in General Series; a chest or brain is not a paired organ
        cardiac = cardiac_attributes(scan, frame_key(im)[2])
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SS", "2D"
        ds.ScanOptions = "CG" if "NominalInterval" in cardiac else ""
        for key, value in cardiac.items():
            setattr(ds, key, value)
        ds.RepetitionTime = who["RepetitionTime"] if who["RepetitionTime"] is not None else ""
        ds.EchoTime = who["EchoTime"] if who["EchoTime"] is not None else ""
        ds.EchoTrainLength = 1
        ds.Rows, ds.Columns = arr.shape
        dy, dx, thickness = pixel_spacing(im, arr.shape, header)
        ds.PixelSpacing = [round(dy, 6), round(dx, 6)]
        ds.SliceThickness = round(thickness, 6)
        # ISMRMRD's position is the image centre; DICOM's is the centre of
        # the first (top-left) pixel.
        centre, read, phase = (np.asarray(v, dtype=np.float64) for v in (im.position, im.read_dir, im.phase_dir))
        corner = centre - read * dx * (arr.shape[1] / 2 - 0.5) - phase * dy * (arr.shape[0] / 2 - 0.5)
        ds.ImagePositionPatient = [round(float(v), 6) for v in corner]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in im.read_dir] + [round(float(v), 6) for v in im.phase_dir]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS_STORED, BITS_STORED - 1, 0
        pixels = np.clip(np.rint(arr * scales[series]), 0, MAX_STORED).astype(np.uint16)
        ds.WindowCenter, ds.WindowWidth = MAX_STORED // 2, MAX_STORED
        ds.PixelData = pixels.tobytes()
        ds.save_as(out_dir / f"s{series:02d}_sl{im.slice:02d}_c{im.contrast}_f{frame_key(im)[2]:03d}.dcm", enforce_file_format=True)
        count += 1
    return count


__all__ = ["save_dicom", "identity", "series_scales", "pixel_spacing", "cardiac_attributes", "BITS_STORED"]
