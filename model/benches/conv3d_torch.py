"""PyTorch's CPU 3D convolution (oneDNN) on the shapes of model/benches/conv3d.rs: forward, input
gradient and weight gradient, median seconds; one JSON line per shape."""
import argparse, json, statistics, time

import torch

SHAPES = [
    ("encoder1 4->48 96^3 k3", 4, 48, 96, 3, 1, 1),
    ("res block 48->48 96^3 k3", 48, 48, 96, 3, 1, 1),
    ("decoder1 96->48 96^3 k3", 96, 48, 96, 3, 1, 1),
    ("res block 96->96 48^3 k3", 96, 96, 48, 3, 1, 1),
    ("1x1 96->48 96^3", 96, 48, 96, 1, 1, 0),
    ("stem 7->64 96^3 k7 s2", 7, 64, 96, 7, 2, 3),
]


def timed(f, iters):
    f()
    runs = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for name, cin, cout, edge, k, stride, padding in SHAPES:
        x = torch.randn(1, cin, edge, edge, edge)
        w = torch.randn(cout, cin, k, k, k) * 0.1
        with torch.no_grad():
            out = torch.nn.functional.conv3d(x, w, None, stride, padding)
        grad = torch.randn_like(out)

        def backward(mask):
            return torch.ops.aten.convolution_backward(
                grad, x, w, None, [stride] * 3, [padding] * 3, [1] * 3, False, [0] * 3, 1, mask)

        with torch.no_grad():
            fwd = timed(lambda: torch.nn.functional.conv3d(x, w, None, stride, padding), a.iters)
            dx = timed(lambda: backward([True, False, False]), a.iters)
            dw = timed(lambda: backward([False, True, False]), a.iters)
        print(json.dumps({"framework": "pytorch " + torch.__version__, "threads": torch.get_num_threads(),
                          "shape": name, "forward": fwd, "input_grad": dx, "weight_grad": dw}), flush=True)


if __name__ == "__main__":
    main()
