#!/usr/bin/env python3
"""PyTorch + MONAI peer of `cargo bench -p mtmed3d-model --bench reference_step`.

Builds the same multi-task architecture as the `reference` preset (MONAI 1.3 SwinUNETR with feature size 48
= the shared Swin encoder and the segmentation decoder; MONAI DenseNet121 3D on the segmentation logits; a
RetinaNet with the same PANet neck and GroupNorm heads, 5 anchors per location) and times, at 1x4x96^3:
inference forward, forward + backward of Dice + focal + detection-style losses, and one AdamW step.

    pip install torch monai==1.3.0 einops   # CPU wheels: --index-url https://download.pytorch.org/whl/cpu
    python model/benches/pytorch_reference.py [--device cpu|cuda] [--iters 3] [--threads N]
        [--only inference,fwd_bwd,parts,step] [--json]

Each measurement is printed (flushed) as it completes; `parts` times each part alone from detached inputs, as
the Rust bench does. `model/benches/model_cpu.sh` runs both at the same thread count and prints the ratios
(burn seconds / PyTorch seconds).
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from monai.networks.nets import DenseNet121, SwinUNETR


def conv(cin, cout, k, stride=1):
    return nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2)


class PanNeck(nn.Module):
    def __init__(self, in_channels, f):
        super().__init__()
        self.lateral = nn.ModuleList([conv(c, f, 1) for c in in_channels])
        self.fpn_out = nn.ModuleList([conv(f, f, 3) for _ in in_channels])
        self.down = nn.ModuleList([conv(f, f, 3, 2) for _ in in_channels[1:]])
        self.pan_out = nn.ModuleList([conv(f, f, 3) for _ in in_channels[1:]])

    def forward(self, feats):
        lat = [l(x) for l, x in zip(self.lateral, feats)]
        inner = lat[-1]
        p = [self.fpn_out[-1](inner)]
        for i in range(len(lat) - 2, -1, -1):
            inner = lat[i] + F.interpolate(inner, size=lat[i].shape[2:], mode="nearest")
            p.insert(0, self.fpn_out[i](inner))
        n = [p[0]]
        for i in range(len(p) - 1):
            n.append(F.relu(self.pan_out[i](p[i + 1] + F.relu(self.down[i](n[i])))))
        return n


class Head(nn.Module):
    def __init__(self, f, convs, groups, out):
        super().__init__()
        layers = []
        for _ in range(convs):
            layers += [conv(f, f, 3), nn.GroupNorm(groups, f), nn.ReLU()]
        self.tower = nn.Sequential(*layers)
        self.predict = conv(f, out, 3)
        self.out = out

    def forward(self, x):
        y = self.predict(self.tower(x))
        b = y.shape[0]
        return y.permute(0, 2, 3, 4, 1).reshape(b, -1, self.out)


class MultiTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.seg = SwinUNETR(img_size=(96, 96, 96), in_channels=4, out_channels=3, feature_size=48)
        self.cls = DenseNet121(spatial_dims=3, in_channels=3, out_channels=2)
        self.neck = PanNeck([96, 192, 384, 768], 96)
        self.cls_head = Head(96, 4, 8, 5 * 1)
        self.box_head = Head(96, 4, 8, 5 * 6)

    def forward(self, x):
        hs = self.seg.swinViT(x, self.seg.normalize)
        enc0 = self.seg.encoder1(x)
        enc1 = self.seg.encoder2(hs[0])
        enc2 = self.seg.encoder3(hs[1])
        enc3 = self.seg.encoder4(hs[2])
        dec4 = self.seg.encoder10(hs[4])
        dec3 = self.seg.decoder5(dec4, hs[3])
        dec2 = self.seg.decoder4(dec3, enc3)
        dec1 = self.seg.decoder3(dec2, enc2)
        dec0 = self.seg.decoder2(dec1, enc1)
        seg = self.seg.out(self.seg.decoder1(dec0, enc0))
        logits = self.cls(seg)
        n = self.neck(list(hs[1:]))
        cls = torch.cat([self.cls_head(t) for t in n], 1)
        box = torch.cat([self.box_head(t) for t in n], 1).reshape(x.shape[0], -1, 6)
        return seg, logits, cls, box


def encoder_features(model, x):
    return model.seg.swinViT(x, model.seg.normalize)


def segmentation(model, x, hs):
    enc0 = model.seg.encoder1(x)
    enc1 = model.seg.encoder2(hs[0])
    enc2 = model.seg.encoder3(hs[1])
    enc3 = model.seg.encoder4(hs[2])
    dec4 = model.seg.encoder10(hs[4])
    dec3 = model.seg.decoder5(dec4, hs[3])
    dec2 = model.seg.decoder4(dec3, enc3)
    dec1 = model.seg.decoder3(dec2, enc2)
    dec0 = model.seg.decoder2(dec1, enc1)
    return model.seg.out(model.seg.decoder1(dec0, enc0))


def detector(model, hs):
    n = model.neck(list(hs[1:]))
    cls = torch.cat([model.cls_head(t) for t in n], 1)
    box = torch.cat([model.box_head(t) for t in n], 1).reshape(hs[0].shape[0], -1, 6)
    return cls, box


ALL = ["inference", "fwd_bwd", "parts", "step"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement and line")
    a = ap.parse_args()
    only = a.only.split(",")
    for o in only:
        if o not in ALL:
            ap.error(f"--only: unknown measurement {o!r} (known: {','.join(ALL)})")
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = MultiTask().to(dev)
    x = torch.randn(1, 4, 96, 96, 96, device=dev)
    seg_t = torch.zeros(1, 3, 96, 96, 96, device=dev)
    seg_t[:, :, 38:58, 36:60, 40:56] = 1
    grade = F.one_hot(torch.tensor([1], device=dev), 2).float()
    dice = DiceLoss(sigmoid=True, squared_pred=True)
    focal = FocalLoss(gamma=2.8)
    params = sum(p.numel() for p in model.parameters())
    header = {"framework": f"torch {torch.__version__}", "device": a.device, "threads": torch.get_num_threads(),
              "input": [1, 4, 96, 96, 96], "parameters": params}
    if not a.json:
        print(f"PyTorch {torch.__version__} + MONAI on {a.device} ({torch.get_num_threads()} threads), "
              f"input 1x4x96^3, {params:,} parameters, {a.iters} timed runs after one warm-up")
        print(f"{'measurement':<34}{'median s':>10}{'min s':>10}", flush=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def torchvision_focal(x, t, gamma=2.0, alpha=0.25):
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        pt = p * t + (1 - p) * (1 - t)
        return ((alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - pt) ** gamma).sum()

    def det_loss(cls, box):
        cls_t = torch.zeros_like(cls)
        cls_t[:, :40] = 1
        return torchvision_focal(cls, cls_t) / 40 + F.smooth_l1_loss(box[:, :40], torch.zeros_like(box[:, :40]),
                                                                      beta=1 / 9)

    def loss_of(out):
        seg, logits, cls, box = out
        return dice(seg, seg_t) + focal(logits, grade) + det_loss(cls, box)

    def row(name, fn):
        times = []
        for i in range(a.iters + 1):
            t = time.perf_counter()
            fn()
            sync()
            if i > 0:
                times.append(time.perf_counter() - t)
        med, low = statistics.median(times), min(times)
        if a.json:
            print(json.dumps({**header, "measurement": name, "seconds": med, "min_seconds": low, "runs": len(times)}),
                  flush=True)
        else:
            print(f"{name:<34}{med:>10.3f}{low:>10.3f}", flush=True)

    if "inference" in only:
        model.eval()
        with torch.no_grad():
            row("inference forward", lambda: model(x))
    model.train()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss_of(model(x)).backward()

    if "fwd_bwd" in only:
        row("forward + backward", fwd_bwd)

    if "parts" in only:
        with torch.no_grad():
            hs = [h.detach() for h in encoder_features(model, x)]
            seg = segmentation(model, x, hs).detach()
            row("encoder forward", lambda: encoder_features(model, x))
            row("segmentation forward", lambda: segmentation(model, x, hs))
            row("classifier forward", lambda: model.cls(seg))
            row("detector forward", lambda: detector(model, hs))

        def enc():
            model.zero_grad(set_to_none=True)
            sum(h.mean() for h in encoder_features(model, x)).backward()

        def leaves():
            return [h.clone().requires_grad_() for h in hs]

        def seg_part():
            model.zero_grad(set_to_none=True)
            dice(segmentation(model, x, leaves()), seg_t).backward()

        def cls_part():
            model.zero_grad(set_to_none=True)
            focal(model.cls(seg.clone().requires_grad_()), grade).backward()

        def det_part():
            model.zero_grad(set_to_none=True)
            det_loss(*detector(model, leaves())).backward()

        row("encoder fwd+bwd", enc)
        row("segmentation fwd+bwd", seg_part)
        row("classifier fwd+bwd", cls_part)
        row("detector fwd+bwd", det_part)

    if "step" in only:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_of(model(x)).backward()
            opt.step()

        row("training step (AdamW)", step)


if __name__ == "__main__":
    main()
