//! The CPU 3D convolution kernels (`mtmed3d_model::conv`) on the layer shapes that dominate the
//! `reference` preset's training step: forward, input gradient and weight gradient, median seconds.
//!
//! ```text
//! cargo bench -p mtmed3d-model --bench conv3d -- [--iters 3] [--threads N] [--json]
//! ```
//! `benches/conv3d_torch.py` measures PyTorch's (oneDNN) kernels on the shapes this prints with
//! `--json`; `benches/conv3d.sh` runs both and prints the ratios.

use std::time::Instant;

use burn::tensor::ops::ConvOptions;
use mtmed3d_model::conv::{Geometry, forward, input_gradient, weight_gradient};

/// (name, input channels, output channels, edge, kernel, stride, padding)
pub const SHAPES: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("encoder1 4->48 96^3 k3", 4, 48, 96, 3, 1, 1),
    ("res block 48->48 96^3 k3", 48, 48, 96, 3, 1, 1),
    ("decoder1 96->48 96^3 k3", 96, 48, 96, 3, 1, 1),
    ("res block 96->96 48^3 k3", 96, 96, 48, 3, 1, 1),
    ("1x1 96->48 96^3", 96, 48, 96, 1, 1, 0),
    ("stem 7->64 96^3 k7 s2", 7, 64, 96, 7, 2, 3),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut iters = 3;
    let mut threads = 0;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).expect("--iters N"),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads N")
            }
            "--json" => json = true,
            _ => {} // cargo bench passes --bench
        }
    }
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .expect("the rayon pool is set once");
    }
    let threads = rayon::current_num_threads();
    for &(name, cin, cout, edge, k, stride, padding) in SHAPES {
        let options = ConvOptions::new([stride; 3], [padding; 3], [1; 3], 1);
        let g = Geometry::new([1, cin, edge, edge, edge], [cout, cin, k, k, k], &options)
            .expect("valid shape");
        let x: Vec<f32> = (0..cin * edge * edge * edge)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let w: Vec<f32> = (0..cout * cin * k * k * k)
            .map(|i| ((i * 104729 % 1000) as f32 - 500.0) / 5000.0)
            .collect();
        let out_len = cout * g.output.iter().product::<usize>();
        let grad: Vec<f32> = (0..out_len)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let time = |f: &mut dyn FnMut() -> usize| {
            std::hint::black_box(f()); // warm-up
            median(
                (0..iters)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(f());
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        let fwd = time(&mut || forward(&x, &w, None, &g).len());
        let dx = time(&mut || input_gradient(&w, &grad, &g).len());
        let dw = time(&mut || weight_gradient(&x, &grad, &g).len());
        if json {
            println!(
                "{}",
                serde_json::json!({"framework": "mtmed3d", "threads": threads, "shape": name,
                    "channels_in": cin, "channels_out": cout, "edge": edge, "kernel": k,
                    "stride": stride, "padding": padding,
                    "forward": fwd, "input_grad": dx, "weight_grad": dw})
            );
        } else {
            println!(
                "{name:<28} forward {fwd:>8.3} s  input grad {dx:>8.3} s  weight grad {dw:>8.3} s"
            );
        }
    }
}
