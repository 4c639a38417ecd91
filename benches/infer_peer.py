#!/usr/bin/env python3
"""PyTorch + MONAI peer of `cargo bench -p mtmed3d-stages --features learn --bench infer`.

Runs MONAI 1.3's `sliding_window_inference` (Gaussian blending, sigma scale 0.125, the same
window layout: 18 windows of 96^3 over 240x240x155 at overlap 0.25) with the reference
architecture from `model/benches/pytorch_reference.py` (every head runs, as in the Rust stage),
then the sigmoid, on random normalised input.

    pip install torch monai==1.3.0   # CPU wheels: --index-url https://download.pytorch.org/whl/cpu
    python3 benches/infer_peer.py [--windows N] [--batch 1] [--overlap 0.25] [--threads N]

With `--windows N` only a slab of N windows runs and the whole volume is extrapolated, as the
Rust bench does. Prints one JSON line; ratio = Rust seconds / PyTorch seconds.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
from monai.inferers import sliding_window_inference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "model", "benches"))
from pytorch_reference import MultiTask  # noqa: E402


def windows_along(n, roi, overlap):
    interval = max(int(roi * (1 - overlap)), 1)
    return 1 if n <= roi else math.ceil((n - roi) / interval) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MultiTask().eval()
    roi = (96, 96, 96)
    shape = (240, 240, 155)
    total = math.prod(windows_along(n, r, a.overlap) for n, r in zip(shape, roi))

    def predictor(x):
        return model(x)[0]

    with torch.no_grad():
        t = time.perf_counter()
        model(torch.randn(1, 4, *roi))
        one = time.perf_counter() - t
        if a.windows:
            z = max(min(roi[2] * a.windows, shape[2]), roi[2])
            x = torch.randn(1, 4, roi[0], roi[1], z)
            measured = windows_along(z, roi[2], a.overlap)
        else:
            x = torch.randn(1, 4, *shape)
            measured = total
        t = time.perf_counter()
        seg = sliding_window_inference(x, roi, a.batch, predictor, overlap=a.overlap,
                                       mode="gaussian", sigma_scale=0.125)
        torch.sigmoid(seg)
        secs = time.perf_counter() - t
    print(json.dumps({
        "framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
        "volume": shape, "patch": roi, "overlap": a.overlap, "batch": a.batch,
        "windows_in_volume": total, "one_window_seconds": one, "windows_measured": measured,
        "seconds_measured": secs, "whole_volume_seconds": secs / measured * total,
        "extrapolated": bool(a.windows),
    }))


if __name__ == "__main__":
    main()
