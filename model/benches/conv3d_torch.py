"""PyTorch's CPU 3D convolution (oneDNN): forward, input gradient and weight gradient, median
seconds, one JSON line per shape, for the shapes in the JSON lines model/benches/conv3d.rs printed
(`--shapes FILE`), so that both sides time the same layers."""
import argparse, json, statistics, time

import torch


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
    p.add_argument("--shapes", required=True, help="JSON lines from `conv3d -- --json`")
    a = p.parse_args()
    rows = [json.loads(line) for line in open(a.shapes) if line.startswith("{")]
    shapes = [(r["shape"], r["channels_in"], r["channels_out"], r["edge"], r["kernel"], r["stride"],
               r["padding"]) for r in rows]
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for name, cin, cout, edge, k, stride, padding in shapes:
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
