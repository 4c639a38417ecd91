#!/usr/bin/env python3
"""Dice + HD95 of WT, TC and ET with MONAI's definitions in scipy + numpy (the code MONAI
1.3.0 runs on CPU: binary_erosion, distance_transform_edt with the voxel spacing,
np.percentile), on the folders `cargo bench -p mtmed3d-stages --bench metrics` writes.

  metrics.py DIR        DIR/truth/HGG/<case>/<case>_seg.nii.gz and DIR/pred/<case>.nii.gz

Prints JSON: the median seconds per case over five rounds (file reading excluded) and the
values.
"""

import glob
import json
import os
import sys
import time

import nibabel as nib
import numpy as np
from scipy import ndimage

REGIONS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}


def surface(mask):
    return mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def scores(pred, truth, spacing):
    out = {"dice": [], "hd95": []}
    for labels in REGIONS.values():
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        if not p.any() or not t.any():
            both = not p.any() and not t.any()
            out["dice"].append(1.0 if both else 0.0)
            out["hd95"].append(0.0 if both else 373.13)
            continue
        out["dice"].append(float(2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())))
        sp, st = surface(p), surface(t)
        a = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
        b = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
        out["hd95"].append(float(max(np.percentile(a, 95), np.percentile(b, 95))))
    return out


def main():
    root = sys.argv[1]
    pairs = []
    for seg in sorted(glob.glob(os.path.join(root, "truth", "*", "*", "*_seg.nii.gz"))):
        case = os.path.basename(os.path.dirname(seg))
        img = nib.load(seg)
        truth = np.asarray(img.dataobj)
        pred = np.asarray(nib.load(os.path.join(root, "pred", f"{case}.nii.gz")).dataobj)
        pairs.append((case, pred, truth, img.header.get_zooms()[:3]))
    rounds, values = [], {}
    for _ in range(5):
        start = time.perf_counter()
        for case, pred, truth, spacing in pairs:
            values[case] = scores(pred, truth, spacing)
        rounds.append((time.perf_counter() - start) / len(pairs))
    rounds.sort()
    print(json.dumps({"seconds_per_case": rounds[len(rounds) // 2], "values": values}))


if __name__ == "__main__":
    main()
