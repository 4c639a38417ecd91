#!/usr/bin/env python3
"""The Python peer of benches/cache.sh: the steps of configs/brats-cache.yaml with nibabel +
numpy + zarr-python, and random training crops read back with zarr-python.

  cache.py preprocess ROOT STORE [P] ROOT holds HGG/ and LGG/ case folders (mtmed3d phantom);
                                     P processes side by side (default 1)
  cache.py crops STORE N             N random 96^3 crops (image 4 channels + label 3)

Preprocess per case: load four modalities and the label (nibabel, float32, RAS via
as_closest_canonical), crop to the image's nonzero box + 8 voxels, z-score each channel over
nonzero voxels, TC/WT/ET region masks, whole-tumour box, then one zarr v3 group per
case with (C, X, Y, Z) arrays in 48^3 chunks, zstd level 3, and the box as an attribute.
Prints JSON with the timings.
"""

import glob
import json
import os
import sys
import time

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

# The same loading, normalisation and cropping as the preprocessing bench's peer.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preprocess import crop_foreground, load_case, whole_tumour_box, zscore_nonzero  # noqa: E402

CHUNK = 48


def preprocess(case_dir, root):
    case = os.path.basename(case_dir)
    image, seg, affine = load_case(case_dir)
    image, (seg,) = crop_foreground(image, [seg])
    zscore_nonzero(image)
    label = np.stack([(seg == 1) | (seg == 4), seg > 0, seg == 4]).astype(np.uint8)
    box = whole_tumour_box(label[1])
    group = root.create_group(case)
    group.attrs.update({"affine": affine.tolist(), "boxes": [box], "shape": list(image.shape)})
    for name, values in (("image", image), ("label", label)):
        chunks = (values.shape[0],) + tuple(min(CHUNK, n) for n in values.shape[1:])
        array = group.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype,
                                   compressors=[ZstdCodec(level=int(os.environ.get("ZSTD_LEVEL", "3")))])
        array[...] = values


def preprocess_into(store, case_dir):
    preprocess(case_dir, zarr.open_group(store, mode="r+"))


def main_preprocess(data, store, processes=1):
    cases = sorted(glob.glob(os.path.join(data, "*", "*")))
    root = zarr.open_group(store, mode="w")
    t = time.perf_counter()
    if processes == 1:
        for case_dir in cases:
            preprocess(case_dir, root)
    else:
        # Cases side by side in separate processes, as one would use a multi-core machine from
        # Python (numpy and nibabel run these steps on one core each); each writes its own group.
        import functools
        import multiprocessing

        with multiprocessing.Pool(processes) as pool:
            pool.map(functools.partial(preprocess_into, store), cases, chunksize=1)
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
        main_preprocess(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    elif sys.argv[1] == "crops":
        main_crops(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
