#!/usr/bin/env python3
"""Checks files written by a `reorient: {axcodes: RAS}` pipeline against nibabel.

  compare_canonical.py INPUT OUTPUT [INPUT OUTPUT ...]

For each pair, nibabel's `as_closest_canonical(load(INPUT))` must equal `load(OUTPUT)`: same
shape, affines within 1e-5, voxels (scaled, as float32) within 1e-6 relative. Prints one JSON
object per pair with the measured differences; exits 1 if any pair differs.
"""

import json
import sys

import nibabel as nib
import numpy as np


def compare(inp, out):
    canon = nib.as_closest_canonical(nib.load(inp))
    got = nib.load(out)
    expected = np.asarray(canon.dataobj, dtype=np.float64)
    actual = np.asarray(got.dataobj, dtype=np.float64)
    # A 3D input is written as [X, Y, Z] or [X, Y, Z, 1].
    if actual.ndim == 4 and actual.shape[3] == 1 and expected.ndim == 3:
        actual = actual[..., 0]
    result = {
        "input": inp,
        "shape_expected": list(expected.shape),
        "shape_actual": list(actual.shape),
        "affine_max_diff": float(np.max(np.abs(canon.affine - got.affine))),
    }
    if expected.shape == actual.shape:
        finite = np.isfinite(expected)
        scale = np.maximum(np.abs(expected[finite]), 1.0)
        result["voxel_max_rel_diff"] = float(np.max(np.abs(expected[finite] - actual[finite]) / scale)) if finite.any() else 0.0
        result["nan_positions_equal"] = bool(np.array_equal(~finite, ~np.isfinite(actual)))
    result["ok"] = (
        expected.shape == actual.shape
        and result["affine_max_diff"] <= 1e-5
        and result.get("voxel_max_rel_diff", 1.0) <= 1e-6
        and result.get("nan_positions_equal", False)
    )
    return result


def main(args):
    if len(args) % 2 or not args:
        sys.exit(__doc__)
    ok = True
    for inp, out in zip(args[::2], args[1::2]):
        r = compare(inp, out)
        ok &= r["ok"]
        print(json.dumps(r))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
