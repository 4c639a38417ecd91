#!/usr/bin/env python3
"""zarr-python as the reference reader and writer of mtmed3d case stores.

    zarr_oracle.py read STORE OUT_DIR
        Opens STORE with zarr-python and writes what it sees to OUT_DIR: `report.json` (the
        root's members and attributes, each case group's attributes, each array's shape,
        dtype and chunks) and `<group>/<array>.bin` (the array's values, C order,
        little-endian), for the Rust side to compare with what it wrote.

    zarr_oracle.py write STORE
        Writes a case store the way mtmed3d lays one out, but with zarr-python (its own
        chunking and default codecs), holding one case `py/case 1` whose values follow the
        formulas in `expected_image` and `expected_label`.
"""

import json
import os
import sys
import warnings

import google_crc32c
import numpy as np
import zarr


def read(store, out_dir):
    # zarr-python's warnings (a folder in the hierarchy that is not a node, say) go into the
    # report for the Rust side to check.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = read_report(store, out_dir)
    report["warnings"] = [str(w.message) for w in caught]
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)


def read_report(store, out_dir):
    root = zarr.open_group(store, mode="r")
    report = {
        "zarr_version": zarr.__version__,
        "root_attributes": dict(root.attrs),
        "members": sorted(name for name, _ in root.members()),
        "cases": {},
    }
    for name, group in root.groups():
        case = {"attributes": dict(group.attrs), "arrays": {}}
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        for array_name, array in group.arrays():
            values = array[...]
            case["arrays"][array_name] = {
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "chunks": list(array.chunks),
            }
            little = values.astype(values.dtype.newbyteorder("<"), copy=False)
            with open(os.path.join(out_dir, name, array_name + ".bin"), "wb") as f:
                f.write(np.ascontiguousarray(little).tobytes())
        report["cases"][name] = case
    return report


def expected_image(shape):
    c, x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (np.sin(0.1 * x + 0.2 * y) * (c + 1) + 0.01 * z).astype(np.float32)


def expected_label(shape):
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (((x + 2 * y + 3 * z) % 5) == 0).astype(np.uint8) * 2


def crc(values):
    return google_crc32c.value(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes())


def write(store):
    root = zarr.open_group(store, mode="w")
    root.attrs["mtmed3d"] = {"kind": "mtmed3d-case-store", "format_version": 1}
    image = expected_image((4, 23, 19, 11))
    label = expected_label((23, 19, 11))
    affine = [[-1.0, 0.0, 0.0, 10.5], [0.0, -1.0, 0.0, 3.25], [0.0, 0.0, 1.0, -7.0], [0.0, 0.0, 0.0, 1.0]]
    group = root.create_group("py~2Fcase~201")
    group.attrs.update(
        {
            "mtmed3d": {
                "format_version": 1,
                "case_id": "py/case 1",
                "cache_key": "written-by-zarr-python",
                "config_hash": None,
                "meta": {
                    "affine": affine,
                    "original_affine": affine,
                    "original_shape": [23, 19, 11],
                    "spacing": [1.0, 1.0, 1.0],
                    "sources": {},
                    "history": [],
                    "attrs": {"grade": "LGG"},
                },
                "fields": {
                    "image": {"kind": "f32", "array": "image", "stored_dtype": "float32", "shape": list(image.shape), "crc32c": crc(image)},
                    "label": {"kind": "u8", "array": "label", "stored_dtype": "uint8", "shape": list(label.shape), "crc32c": crc(label)},
                    "grade": {"kind": "text", "value": "LGG"},
                },
                "foreground": {"field": "label", "count": int((label != 0).sum()), "voxels": [[0, 0, 0]]},
            }
        }
    )
    # zarr-python's own chunking (not ours) and default codecs.
    a = group.create_array("image", shape=image.shape, chunks=(2, 10, 7, 5), dtype="float32")
    a[...] = image
    b = group.create_array("label", shape=label.shape, chunks=(8, 8, 8), dtype="uint8")
    b[...] = label


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "read":
        read(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        sys.exit(__doc__)
