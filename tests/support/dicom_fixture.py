"""Write a volume as a DICOM MR series with pydicom: one file per slice, as scanners export them.

The geometry is the volume's own: each slice's ImagePositionPatient and the shared
ImageOrientationPatient come from the NIfTI affine (RAS+ mm) turned into DICOM's LPS, so a
converter that reads the series back must reproduce the volume and its affine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_series(folder: Path, data: np.ndarray, affine: np.ndarray, description: str = "t1_mprage_sag",
                 series_number: int = 2, study_uid: str | None = None) -> Path:
    """Write ``data`` (x, y, z voxels; the affine maps them to RAS+ mm) as int16 slices along z,
    named ``IM0001.dcm``...; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    directions = RAS_TO_LPS @ (affine[:3, :3] / spacing)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    pixels = np.rint(data).astype(np.int16)
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Manufacturer, ds.PatientPosition = "MR", "defacegan tests", "HFS"
        ds.PatientName, ds.PatientID = "Generated^Head", "GEN0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20260101"
        ds.SeriesDescription = ds.ProtocolName = description
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, k + 1, 1
        ds.FrameOfReferenceUID = generate_uid()
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.MagneticFieldStrength, ds.RepetitionTime, ds.EchoTime = 3, 2300, 3
        ds.ImageOrientationPatient = [f"{value:.6f}" for value in directions[:, :2].T.ravel()]
        position = RAS_TO_LPS @ (affine @ [0, 0, k, 1])[:3]
        ds.ImagePositionPatient = [f"{value:.4f}" for value in position]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]  # between rows (y), between columns (x)
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:.4f}"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # rows run along y, columns along x
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return folder
