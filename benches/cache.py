#!/usr/bin/env python3
"""The Python peer of benches/cache.sh: the steps of configs/brats-cache.yaml with nibabel +
numpy + zarr-python, and random training crops read back with zarr-python.

  cache.py preprocess ROOT STORE     ROOT holds HGG/ and LGG/ case folders (mtmed3d phantom)
  cache.py crops STORE N             N random 96^3 crops (image 4 channels + label 3)

Preprocess per case: load four modalities and the label (nibabel, float32, RAS via
as_closest_canonical), z-score each channel over nonzero voxels, TC/WT/ET region masks,
crop to the image's nonzero box + 8 voxels, whole-tumour box, then one zarr v3 group per
case with (C, X, Y, Z) arrays in 48^3 chunks, zstd level 3, and the box as an attribute.
Prints JSON with the timings.
"""

import glob
import json
import os
import sys
import time

import nibabel as nib
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

MODALITIES = ["t1", "t1ce", "t2", "flair"]
CHUNK = 48


def load_ras(path, dtype):
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj, dtype=dtype), img.affine


def preprocess(case_dir, root):
    case = os.path.basename(case_dir)
    loaded = [load_ras(os.path.join(case_dir, f"{case}_{m}.nii.gz"), np.float32) for m in MODALITIES]
    image = np.stack([a for a, _ in loaded])
    affine = loaded[0][1]
    seg, _ = load_ras(os.path.join(case_dir, f"{case}_seg.nii.gz"), np.uint8)
    for c in range(image.shape[0]):
        channel = image[c]
        mask = channel != 0
        if mask.any():
            values = channel[mask]
            std = values.std()
            channel[mask] = (values - values.mean()) / (std if std > 0 else 1.0)
    label = np.stack([(seg == 1) | (seg == 4), seg > 0, seg == 4]).astype(np.uint8)
    nonzero = np.any(image != 0, axis=0)
    lo = [int(np.argmax(np.any(nonzero, axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3)]
    hi = [int(nonzero.shape[ax] - np.argmax(np.any(nonzero, axis=tuple(a for a in range(3) if a != ax))[::-1])) for ax in range(3)]
    start = [l - 8 for l in lo]
    size = [h - l + 16 for l, h in zip(lo, hi)]
    pad = [(max(0, -s), max(0, s + n - dim)) for s, n, dim in zip(start, size, nonzero.shape)]
    image = np.pad(image, [(0, 0)] + pad)
    label = np.pad(label, [(0, 0)] + pad)
    sl = tuple(slice(s + p[0], s + p[0] + n) for s, n, p in zip(start, size, pad))
    image = np.ascontiguousarray(image[(slice(None),) + sl])
    label = np.ascontiguousarray(label[(slice(None),) + sl])
    idx = np.nonzero(label[1])
    box = [int(i.min()) for i in idx] + [int(i.max()) + 1 for i in idx] if idx[0].size else []
    group = root.create_group(case)
    group.attrs.update({"affine": affine.tolist(), "boxes": [box], "shape": list(image.shape)})
    for name, values in (("image", image), ("label", label)):
        chunks = (values.shape[0],) + tuple(min(CHUNK, n) for n in values.shape[1:])
        array = group.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype,
                                   compressors=[ZstdCodec(level=3)])
        array[...] = values


def main_preprocess(data, store):
    cases = sorted(glob.glob(os.path.join(data, "*", "*")))
    root = zarr.open_group(store, mode="w")
    t = time.perf_counter()
    for case_dir in cases:
        preprocess(case_dir, root)
    wall = time.perf_counter() - t
    print(json.dumps({"cases": len(cases), "wall_s": wall, "seconds_per_case": wall / len(cases)}))


def main_crops(store, n):
    root = zarr.open_group(store, mode="r")
    groups = [g for _, g in sorted(root.groups())]
    arrays = [(g["image"], g["label"]) for g in groups]
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(n):
        image, label = arrays[rng.integers(len(arrays))]
        start = [int(rng.integers(0, max(1, s - 96 + 1))) for s in image.shape[1:]]
        sl = tuple(slice(s, s + 96) for s in start)
        a = image[(slice(None),) + sl]
        b = label[(slice(None),) + sl]
        assert a.shape[0] == 4 and b.shape[0] == 3
    wall = time.perf_counter() - t
    print(json.dumps({"crops": n, "wall_s": wall, "crops_per_s": n / wall}))


if __name__ == "__main__":
    if sys.argv[1] == "preprocess":
        main_preprocess(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "crops":
        main_crops(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
