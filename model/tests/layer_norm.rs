//! The fused layer norm against burn's own operation: outputs and the gradients of the input,
//! the scale and the shift, for several row counts and widths, and the parameters' gradients
//! identical whatever the thread count.

mod common;

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Distribution, Tensor};
use common::assert_close;
use mtmed3d_model::CpuAutodiff;
use mtmed3d_model::layer_norm::{composed, layer_norm};

/// A norm of width `c` with scale and shift far from their initial ones and zeros.
fn norm(c: usize) -> LayerNorm<CpuAutodiff> {
    let device = Default::default();
    let mut norm = LayerNormConfig::new(c)
        .with_epsilon(1e-5)
        .init::<CpuAutodiff>(&device);
    norm.gamma = norm
        .gamma
        .map(|g| g.random_like(Distribution::Normal(1.0, 0.5)).require_grad());
    norm.beta = norm
        .beta
        .map(|b| b.map(|b| b.random_like(Distribution::Normal(0.0, 0.5)).require_grad()));
    norm
}

fn check(shape: [usize; 3], offset: f32) {
    let device = Default::default();
    let c = shape[2];
    let norm = norm(c);
    // An offset far from zero: a one-pass variance would lose digits here.
    let x =
        Tensor::<CpuAutodiff, 3>::random(shape, Distribution::Normal(offset as f64, 2.0), &device);
    let seed = Tensor::<CpuAutodiff, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let x = x.clone().require_grad();
        let out = if fused {
            layer_norm(&norm, x.clone(), 1e-5)
        } else {
            composed(
                x.clone(),
                norm.gamma.val(),
                norm.beta.as_ref().map(|b| b.val()),
                1e-5,
            )
        };
        let grads = (out.clone() * seed.clone()).sum().backward();
        (
            out.into_data(),
            x.grad(&grads).unwrap().into_data(),
            norm.gamma.grad(&grads).unwrap().into_data(),
            norm.beta
                .as_ref()
                .unwrap()
                .grad(&grads)
                .unwrap()
                .into_data(),
        )
    };
    let label = format!("{shape:?}, mean {offset}");
    let (out, dx, dg, db) = run(true);
    let (ref_out, ref_dx, ref_dg, ref_db) = run(false);
    assert_eq!(out.shape.as_slice(), shape, "{label}");
    assert_close(&out, &ref_out, 1e-5, &format!("{label}: output"));
    assert_close(&dx, &ref_dx, 1e-4, &format!("{label}: input gradient"));
    assert_close(&dg, &ref_dg, 1e-4, &format!("{label}: scale gradient"));
    assert_close(&db, &ref_db, 1e-4, &format!("{label}: shift gradient"));
    // One channel normalises to the shift alone: its input gradient is zero, as the reference's.
    if c > 1 {
        let largest = dx
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(largest > 1e-3, "{label}: input gradient all but zero");
    }
}

#[test]
fn fused_layer_norm_equals_burns_operation() {
    check([1, 1, 1], 0.0);
    check([2, 3, 5], 0.0);
    // More rows than one task takes, and not a multiple of it.
    check([3, 300, 48], 3.0);
    check([1, 27, 384], -10.0);
}

#[test]
fn the_parameters_gradients_do_not_depend_on_the_thread_count() {
    let device = Default::default();
    let norm = norm(24);
    let x = Tensor::<CpuAutodiff, 3>::random([4, 700, 24], Distribution::Normal(0.0, 1.0), &device);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let grads = layer_norm(&norm, x.clone(), 1e-5)
                .powf_scalar(2.0)
                .sum()
                .backward();
            let gamma = norm
                .gamma
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let beta = norm
                .beta
                .as_ref()
                .unwrap()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            (gamma, beta)
        })
    };
    assert_eq!(run(1), run(3));
}
