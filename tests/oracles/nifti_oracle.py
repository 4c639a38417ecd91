#!/usr/bin/env python3
"""nibabel as the reference for mtmed3d's NIfTI reader, writer and orientation code.

Needs `pip install nibabel numpy`. Commands (all output goes to files or stdout as JSON):

  datadir                      print {"datadir": <nibabel's tests/data folder>}
  dump OUT IN [IN ...]         for the i-th input write OUT/<i>/meta.json and the arrays
                               raw.bin (stored values, unscaled), scaled.bin (np.asanyarray(dataobj))
                               and canonical.bin (as_closest_canonical's dataobj)
  ornt OUT N SEED              N random affines (plain, flipped, permuted, oblique, sheared,
                               rank-deficient) with nibabel's io_orientation and aff2axcodes
                               in OUT/ornt.json

Arrays are written C-order, little-endian, channel-first ([C, X, Y, Z]: a 4th dimension
becomes the first axis), the layout mtmed3d uses, so the Rust side compares whole arrays.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, io_orientation


def channel_first(arr):
    """[X, Y, Z, T...] -> [C, X, Y, Z] with C the product of the non-spatial dims."""
    arr = np.asarray(arr)
    while arr.ndim < 3:
        arr = arr[..., None]
    arr = arr.reshape(arr.shape[:3] + (-1,))
    return np.ascontiguousarray(np.moveaxis(arr, 3, 0))


def write_array(path, arr):
    arr = channel_first(arr)
    arr.astype(arr.dtype.newbyteorder('<'), copy=False).tofile(path)
    return {'shape': list(arr.shape), 'dtype': arr.dtype.name}


def ornt_list(ornt):
    return [[None if np.isnan(a) else int(a), None if np.isnan(f) else int(f)] for a, f in ornt]


def dump(out, paths):
    for i, path in enumerate(paths):
        d = os.path.join(out, str(i))
        os.makedirs(d, exist_ok=True)
        img = nib.load(path)
        # nibabel blanks scl_slope/scl_inter in img.header after loading; read them raw.
        with nib.openers.ImageOpener(path) as f:
            raw_hdr = type(img.header).from_fileobj(f)
        slope, inter = raw_hdr.get_slope_inter()
        canon = nib.as_closest_canonical(img)
        hdr = img.header
        meta = {
            'path': path,
            'affine': img.affine.tolist(),
            # From the file's own header: img.header's are recomputed from img.affine.
            'qform': raw_hdr.get_qform().tolist(),
            'sform': raw_hdr.get_sform().tolist(),
            'qform_code': int(raw_hdr['qform_code']),
            'sform_code': int(raw_hdr['sform_code']),
            'zooms': [float(z) for z in hdr.get_zooms()],
            'axcodes': list(aff2axcodes(img.affine)),
            'io_orientation': ornt_list(io_orientation(img.affine)),
            'slope': slope,
            'inter': inter,
            'extensions': [[int(e.get_code()), len(e.get_content())] for e in hdr.extensions],
            'sizeof_hdr': int(raw_hdr['sizeof_hdr']),
            'raw': write_array(os.path.join(d, 'raw.bin'), img.dataobj.get_unscaled()),
            'scaled': write_array(os.path.join(d, 'scaled.bin'), np.asanyarray(img.dataobj)),
            'canonical': write_array(os.path.join(d, 'canonical.bin'), np.asanyarray(canon.dataobj)),
            'canonical_affine': canon.affine.tolist(),
        }
        with open(os.path.join(d, 'meta.json'), 'w') as f:
            json.dump(meta, f)


def random_affines(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 5
        perm = rng.permutation(3)
        signs = rng.choice([-1.0, 1.0], 3)
        zooms = rng.uniform(0.3, 4.0, 3)
        m = np.zeros((3, 3))
        m[perm, np.arange(3)] = signs * zooms
        if kind >= 1:  # oblique: a random rotation of up to ~40 degrees
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            angle = rng.uniform(-0.7, 0.7)
            k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
            m = rot @ m
        if kind == 2:  # shear
            m = m @ (np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3)) * (1 - np.eye(3)))
        if kind == 3:  # near 45 degrees: ties decided by the greedy order
            c = np.cos(np.pi / 4 + rng.uniform(-1e-3, 1e-3))
            s = np.sqrt(1 - c * c)
            m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(signs * zooms)
        if kind == 4 and i % 10 == 4:  # rank-deficient
            m[:, rng.integers(3)] = 0
        aff = np.eye(4)
        aff[:3, :3] = m
        aff[:3, 3] = rng.uniform(-100, 100, 3)
        out.append(aff)
    return out


def ornt(out, n, seed):
    cases = []
    for aff in random_affines(n, seed):
        cases.append({
            'affine': aff.tolist(),
            'io_orientation': ornt_list(io_orientation(aff)),
            'axcodes': list(aff2axcodes(aff)),
        })
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'ornt.json'), 'w') as f:
        json.dump(cases, f)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == 'datadir':
        print(json.dumps({'datadir': os.path.join(os.path.dirname(nib.__file__), 'tests', 'data'),
                          'nibabel': nib.__version__}))
    elif cmd == 'dump':
        dump(argv[2], argv[3:])
    elif cmd == 'ornt':
        ornt(argv[2], int(argv[3]), int(argv[4]))
    else:
        sys.exit(f'unknown command {cmd!r}\n{__doc__}')


if __name__ == '__main__':
    main(sys.argv)
