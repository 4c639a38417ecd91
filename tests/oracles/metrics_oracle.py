#!/usr/bin/env python3
"""Reference metrics for `mtmed3d evaluate`, computed with other people's code.

    python3 metrics_oracle.py --pred DIR --truth DIR [--convention brats2018|brats2023]

Reads the same folders as `mtmed3d evaluate` (truth: HGG/ and LGG/ case folders with
<case>_seg.nii.gz; predictions: <case>.nii.gz and <case>.json) and prints JSON
{"aggregate": {...}, "cases": {case: {...}}}.

- Dice and HD95: MONAI's definitions with scipy: surface = mask XOR its erosion by the
  6-connected cross (scipy.ndimage.binary_erosion), distances from
  scipy.ndimage.distance_transform_edt(~surface, sampling=spacing), HD95 = max of the two
  directed np.percentile(…, 95); BraTS rules for empty masks.
- Classification: scikit-learn's confusion_matrix with HGG positive.
- Detection: MONAI 1.3.0's own monai/apps/detection/metrics/coco.py and matching.py, loaded
  by file path (they need only numpy), with a numpy version of MONAI's box_iou.
"""

import argparse
import importlib.util
import json
import os
import sys


def need(module, install):
    try:
        return __import__(module)
    except ImportError:
        sys.exit(f"metrics_oracle.py needs {module}: pip install {install}")


np = need("numpy", "numpy")
nib = need("nibabel", "nibabel")
need("scipy", "scipy")
need("sklearn", "scikit-learn")
from scipy import ndimage  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

HD95_EMPTY = 373.13


def load_monai_file(name):
    """Loads monai/apps/detection/metrics/<name>.py without importing the monai package (which
    would need torch)."""
    spec = importlib.util.find_spec("monai")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("metrics_oracle.py needs MONAI's source: pip install --no-deps monai==1.3.0")
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "apps", "detection", "metrics", f"{name}.py")
    s = importlib.util.spec_from_file_location(f"monai_{name}", path)
    module = importlib.util.module_from_spec(s)
    s.loader.exec_module(module)
    return module


coco = load_monai_file("coco")
matching = load_monai_file("matching")


def box_iou(a, b):
    """MONAI's box_iou for [N, 6] and [M, 6] boxes (float32 epsilon in the denominator)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    vol_a = np.prod(a[:, 3:] - a[:, :3], axis=1)
    vol_b = np.prod(b[:, 3:] - b[:, :3], axis=1)
    lt = np.maximum(a[:, None, :3], b[None, :, :3])
    rb = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return inter / (union + np.finfo(np.float32).eps)


def surface(mask):
    cross = ndimage.generate_binary_structure(3, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=cross)


def hd95(pred, truth, spacing):
    sp, st = surface(pred), surface(truth)
    d_pt = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    d_tp = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))


def region_scores(pred, truth, spacing):
    if not pred.any() and not truth.any():
        return 1.0, 0.0
    if not pred.any() or not truth.any():
        return 0.0, HD95_EMPTY
    dice = 2.0 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum())
    return float(dice), float(hd95(pred, truth, spacing))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pred", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--convention", default="brats2018")
    ap.add_argument("--max-detections", type=int, default=100)
    args = ap.parse_args()
    et = 4 if args.convention == "brats2018" else 3
    regions = {"wt": (1, 2, et), "tc": (1, et), "et": (et,)}

    cases = []
    for grade in ("HGG", "LGG"):
        folder = os.path.join(args.truth, grade)
        if os.path.isdir(folder):
            cases += [(c, grade) for c in os.listdir(folder)]
    cases.sort()

    per_case, truth_grades, pred_grades = {}, [], []
    pred_boxes, pred_scores, gt_boxes = [], [], []
    for case, grade in cases:
        timg = nib.load(os.path.join(args.truth, grade, case, f"{case}_seg.nii.gz"))
        truth = np.asarray(timg.dataobj).astype(np.int64)
        spacing = timg.header.get_zooms()[:3]
        pred = np.asarray(nib.load(os.path.join(args.pred, f"{case}.nii.gz")).dataobj).astype(np.int64)
        with open(os.path.join(args.pred, f"{case}.json")) as f:
            doc = json.load(f)
        row = {}
        for name, labels in regions.items():
            d, h = region_scores(np.isin(pred, labels), np.isin(truth, labels), spacing)
            row[f"dice_{name}"], row[f"hd95_{name}"] = d, h
        per_case[case] = row
        truth_grades.append(1 if grade == "HGG" else 0)
        pred_grades.append(1 if doc["grade"] == "HGG" else 0)
        wt = np.argwhere(np.isin(truth, regions["wt"]))
        if len(wt):
            gt_boxes.append(np.concatenate([wt.min(0), wt.max(0) + 1])[None].astype(np.float64))
        else:
            gt_boxes.append(np.zeros((0, 6)))
        pred_boxes.append(np.array([b["box"] for b in doc["boxes"]], dtype=np.float64).reshape(-1, 6))
        pred_scores.append(np.array([b["score"] for b in doc["boxes"]], dtype=np.float64))

    agg = {}
    for key in ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et"):
        agg[key] = float(np.mean([per_case[c][key] for c in per_case]))

    tn, fp, fn, tp = confusion_matrix(truth_grades, pred_grades, labels=[0, 1]).ravel()
    agg["accuracy"] = float((tp + tn) / (tp + tn + fp + fn))
    agg["sensitivity"] = float(tp / (tp + fn)) if tp + fn else None
    agg["specificity"] = float(tn / (tn + fp)) if tn + fp else None

    metric = coco.COCOMetric(classes=["tumour"], iou_list=[0.5], iou_range=(0.1, 0.5, 0.05),
                             max_detection=[args.max_detections], verbose=False)
    results = matching.matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=pred_boxes,
        pred_classes=[np.zeros(len(s), dtype=int) for s in pred_scores],
        pred_scores=pred_scores,
        gt_boxes=gt_boxes,
        gt_classes=[np.zeros(len(g), dtype=int) for g in gt_boxes],
        max_detections=args.max_detections,
    )
    values, _ = metric(results)
    m = args.max_detections
    agg["map_10_50"] = values[f"mAP_IoU_0.10_0.50_0.05_MaxDet_{m}"]
    agg["mar_10_50"] = values[f"mAR_IoU_0.10_0.50_0.05_MaxDet_{m}"]
    agg["map_50"] = values[f"AP_IoU_0.50_MaxDet_{m}"]
    agg["mar_50"] = values[f"AR_IoU_0.50_MaxDet_{m}"]
    print(json.dumps({"aggregate": agg, "cases": per_case}))


if __name__ == "__main__":
    main()
