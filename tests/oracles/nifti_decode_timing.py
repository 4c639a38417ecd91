#!/usr/bin/env python3
"""Time nibabel decoding a NIfTI file to a float32 array, as mtmed3d's `nifti` bench does.

Usage: nifti_decode_timing.py FILE [REPEATS]
Prints JSON with the median and minimum seconds of two variants:
  fdata      nib.load + get_fdata(dtype=float32): a Fortran-order [X, Y, Z] array (no transpose)
  c_order    the same followed by np.ascontiguousarray: C-order [X, Y, Z], the layout mtmed3d
             produces (its reader transposes while decoding)
Each repeat loads the file from scratch; the file stays in the page cache between repeats, as
it does for the Rust side.
"""

import json
import sys
import time

import nibabel as nib
import numpy as np


def timed(path, repeats, contiguous):
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        arr = nib.load(path).get_fdata(dtype=np.float32)
        if contiguous:
            arr = np.ascontiguousarray(arr)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])  # the first run warms imports and caches
    return {'median_s': times[len(times) // 2], 'min_s': times[0], 'shape': list(arr.shape)}


def main():
    path = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    print(json.dumps({
        'nibabel': nib.__version__,
        'numpy': np.__version__,
        'fdata': timed(path, repeats, False),
        'c_order': timed(path, repeats, True),
    }))


if __name__ == '__main__':
    main()
