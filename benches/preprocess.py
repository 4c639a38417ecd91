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


def preprocess(case_dir):
    case = os.path.basename(case_dir)
    image = np.stack([load_ras(os.path.join(case_dir, f"{case}_{m}.nii.gz"), np.float32)[0] for m in MODALITIES])
    label, _ = load_ras(os.path.join(case_dir, f"{case}_seg.nii.gz"), np.uint8)
    for c in range(image.shape[0]):
        channel = image[c]
        mask = channel != 0
        if mask.any():
            values = channel[mask]
            std = values.std()
            channel[mask] = (values - values.mean()) / (std if std > 0 else 1.0)
    nonzero = np.any(image != 0, axis=0)
    lo = [int(np.argmax(np.any(nonzero, axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3)]
    hi = [int(nonzero.shape[ax] - np.argmax(np.any(nonzero, axis=tuple(a for a in range(3) if a != ax))[::-1])) for ax in range(3)]
    start = [l - 8 for l in lo]
    size = [h - l + 16 for l, h in zip(lo, hi)]
    pad = [(max(0, -s), max(0, s + n - dim)) for s, n, dim in zip(start, size, nonzero.shape)]
    image = np.pad(image, [(0, 0)] + pad)
    label = np.pad(label, pad)
    sl = tuple(slice(s + p[0], s + p[0] + n) for s, n, p in zip(start, size, pad))
    image = np.ascontiguousarray(image[(slice(None),) + sl])
    label = np.ascontiguousarray(label[sl])
    wt = label > 0
    idx = np.nonzero(wt)
    box = [int(i.min()) for i in idx] + [int(i.max()) + 1 for i in idx] if idx[0].size else []
    return image.shape, box


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
