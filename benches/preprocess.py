#!/usr/bin/env python3
"""The preprocessing of benches/preprocess.yaml in Python: nibabel + numpy, as a MONAI-style
pipeline would do it. Prints JSON with the seconds per case.

  preprocess.py ROOT            ROOT holds HGG/ and LGG/ case folders (mtmed3d phantom)

Steps per case: load four modalities and the label (nibabel, float32), reorient to RAS
(as_closest_canonical), stack channel-first, z-score each channel over nonzero voxels,
crop to the nonzero bounding box of the image plus 8 voxels (zero padding), and the
whole-tumour box from the cropped label (x2 = last index + 1).
"""

import glob
import json
import os
import sys
import time

import nibabel as nib
import numpy as np

MODALITIES = ["t1", "t1ce", "t2", "flair"]


def load_ras(path, dtype):
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj, dtype=dtype), img.affine


def load_case(case_dir):
    """Four modalities stacked channel-first (float32, RAS), the label map (uint8) and the affine."""
    case = os.path.basename(case_dir)
    loaded = [load_ras(os.path.join(case_dir, f"{case}_{m}.nii.gz"), np.float32) for m in MODALITIES]
    label, _ = load_ras(os.path.join(case_dir, f"{case}_seg.nii.gz"), np.uint8)
    return np.stack([a for a, _ in loaded]), label, loaded[0][1]


def zscore_nonzero(image):
    """Z-score each channel over its nonzero voxels, in place."""
    for c in range(image.shape[0]):
        channel = image[c]
        mask = channel != 0
        if mask.any():
            values = channel[mask]
            std = values.std()
            channel[mask] = (values - values.mean()) / (std if std > 0 else 1.0)


def crop_foreground(image, others, margin=8):
    """Crop the image and `others` (spatial arrays with any leading axes) to the image's
    nonzero box plus `margin` voxels, zero-padding where the window leaves the volume."""
    nonzero = np.any(image != 0, axis=0)
    lo = [int(np.argmax(np.any(nonzero, axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3)]
    hi = [int(nonzero.shape[ax] - np.argmax(np.any(nonzero, axis=tuple(a for a in range(3) if a != ax))[::-1])) for ax in range(3)]
    start = [l - margin for l in lo]
    size = [h - l + 2 * margin for l, h in zip(lo, hi)]
    pad = [(max(0, -s), max(0, s + n - dim)) for s, n, dim in zip(start, size, nonzero.shape)]
    sl = tuple(slice(s + p[0], s + p[0] + n) for s, n, p in zip(start, size, pad))

    def crop(a):
        lead = a.ndim - 3
        a = np.pad(a, [(0, 0)] * lead + pad)
        return np.ascontiguousarray(a[(slice(None),) * lead + sl])

    return crop(image), [crop(o) for o in others]


def whole_tumour_box(wt):
    """[x1, y1, z1, x2, y2, z2] of a mask, x2 = last index + 1; [] when empty."""
    idx = np.nonzero(wt)
    return [int(i.min()) for i in idx] + [int(i.max()) + 1 for i in idx] if idx[0].size else []


def preprocess(case_dir):
    image, label, _ = load_case(case_dir)
    zscore_nonzero(image)
    image, (label,) = crop_foreground(image, [label])
    return image.shape, whole_tumour_box(label > 0)


def main():
    root = sys.argv[1]
    cases = sorted(glob.glob(os.path.join(root, "*", "*")))
    times = []
    for case_dir in cases:
        t = time.perf_counter()
        shape, box = preprocess(case_dir)
        times.append(time.perf_counter() - t)
    print(json.dumps({"cases": len(cases), "seconds_per_case": sum(times) / len(times), "times": times}))


if __name__ == "__main__":
    main()
