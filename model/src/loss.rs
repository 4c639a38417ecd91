//! Task losses: soft Dice (segmentation), sigmoid focal (classification, detection), smooth L1 and
//! generalised IoU (boxes).

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;

use crate::config::DiceConfig;

/// Soft Dice loss on sigmoid probabilities, per sample and channel (or per channel over the batch with
/// `batch_dice`), averaged.
///
/// `logits`, `target`: `[B, C, D, H, W]`, target in {0, 1}. With `smooth_nr > 0` an empty target scores
/// 0 for an empty prediction and rises — with a gradient — with the false positives.
pub fn dice_loss<B: Backend>(
    config: &DiceConfig,
    logits: Tensor<B, 5>,
    target: Tensor<B, 5>,
) -> Tensor<B, 1> {
    let [b, c, d, h, w] = logits.dims();
    let (p, t) = if config.batch_dice {
        // [C, B, …] so that one row per channel holds every sample's voxels
        let pooled = [1, c, b * d * h * w];
        (
            sigmoid(logits).swap_dims(0, 1).reshape(pooled),
            target.swap_dims(0, 1).reshape(pooled),
        )
    } else {
        (
            sigmoid(logits).reshape([b, c, d * h * w]),
            target.reshape([b, c, d * h * w]),
        )
    };
    let intersection = (p.clone() * t.clone()).sum_dim(2); // [B, C, 1]
    let denominator = if config.squared_pred {
        p.square().sum_dim(2) + t.square().sum_dim(2)
    } else {
        p.sum_dim(2) + t.sum_dim(2)
    };
    let dice = intersection
        .mul_scalar(2.0)
        .add_scalar(config.smooth_nr)
        .div(denominator.add_scalar(config.smooth_dr));
    dice.neg().add_scalar(1.0).mean()
}

/// Mean voxel-wise binary cross-entropy of logits against {0, 1} targets.
pub fn bce_with_logits<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    target: Tensor<B, D>,
) -> Tensor<B, 1> {
    let ce = relu(logits.clone()) - logits.clone() * target + logits.abs().neg().exp().log1p();
    ce.mean()
}

/// Segmentation loss: Dice plus `bce_weight` × binary cross-entropy.
pub fn segmentation_loss<B: Backend>(
    config: &crate::config::LossConfig,
    logits: Tensor<B, 5>,
    target: Tensor<B, 5>,
) -> Tensor<B, 1> {
    let dice = dice_loss(&config.dice, logits.clone(), target.clone());
    if config.seg_bce_weight > 0.0 {
        dice + bce_with_logits(logits, target).mul_scalar(config.seg_bce_weight)
    } else {
        dice
    }
}

/// Elementwise sigmoid focal loss (Lin et al. 2017) of logits against {0, 1} targets, unreduced.
///
/// `alpha` weights positives by `α` and negatives by `1 − α`; `None` leaves them unweighted.
pub fn sigmoid_focal_loss<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    target: Tensor<B, D>,
    gamma: f64,
    alpha: Option<f64>,
) -> Tensor<B, D> {
    let p = sigmoid(logits.clone());
    // binary cross-entropy with logits, stable form: max(x, 0) − x·t + ln(1 + e^−|x|)
    let ce =
        relu(logits.clone()) - logits.clone() * target.clone() + logits.abs().neg().exp().log1p();
    let p_t = p.clone() * target.clone()
        + (p.neg().add_scalar(1.0)) * (target.clone().neg().add_scalar(1.0));
    // (1 − p_t)^γ; the clamp keeps the power's gradient finite where p_t = 1 (it is 0 there anyway)
    let modulating = p_t
        .neg()
        .add_scalar(1.0)
        .clamp_min(1e-12)
        .powf_scalar(gamma);
    let loss = ce * modulating;
    match alpha {
        Some(a) => loss * target.mul_scalar(2.0 * a - 1.0).add_scalar(1.0 - a),
        None => loss,
    }
}

/// Elementwise smooth L1 (Huber with transition `beta`), unreduced.
pub fn smooth_l1<B: Backend, const D: usize>(
    pred: Tensor<B, D>,
    target: Tensor<B, D>,
    beta: f64,
) -> Tensor<B, D> {
    let diff = (pred - target).abs();
    let quadratic = diff.clone().square().mul_scalar(0.5 / beta);
    let linear = diff.clone().sub_scalar(0.5 * beta);
    linear.mask_where(diff.lower_elem(beta), quadratic)
}

/// Generalised IoU loss (Rezatofighi et al., CVPR 2019), `1 − GIoU` per box: the boxes decoded from
/// `deltas` (`[P, 6]`, the box coder's offsets, log-ratios clamped as in decoding) at `anchors` against
/// `targets` (both `[P, 6]` corners `[x0, y0, z0, x1, y1, z1]`). Unlike smooth L1 on the offsets it
/// scores the overlap the evaluation counts, whatever the box's size, and still has a gradient for
/// boxes that do not overlap (through the enclosing box). Returns `[P]`, in [0, 2).
pub fn giou_loss<B: Backend>(
    deltas: Tensor<B, 2>,
    anchors: Tensor<B, 2>,
    targets: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [p, _] = deltas.dims();
    let col = |t: &Tensor<B, 2>, i: usize| t.clone().slice([0..p, i..i + 1]);
    // per axis: overlap, predicted edge, target edge and enclosing edge; volumes are products
    let mut edges: [Vec<Tensor<B, 2>>; 4] = Default::default();
    for a in 0..3 {
        let (a_lo, a_hi) = (col(&anchors, a), col(&anchors, a + 3));
        let anchor_size = a_hi - a_lo.clone();
        let centre =
            a_lo + anchor_size.clone().div_scalar(2.0) + col(&deltas, a) * anchor_size.clone();
        let size = col(&deltas, a + 3)
            .clamp_max(f64::from(
                crate::decoder::detection::box_coder::MAX_LOG_RATIO,
            ))
            .exp()
            * anchor_size;
        let half = size.clone().div_scalar(2.0);
        let (lo, hi) = (centre.clone() - half.clone(), centre + half);
        let (t_lo, t_hi) = (col(&targets, a), col(&targets, a + 3));
        edges[0].push(
            (hi.clone().min_pair(t_hi.clone()) - lo.clone().max_pair(t_lo.clone())).clamp_min(0.0),
        );
        edges[1].push(size);
        edges[2].push(t_hi.clone() - t_lo.clone());
        edges[3].push(hi.max_pair(t_hi) - lo.min_pair(t_lo));
    }
    let [inter, pred_volume, target_volume, enclosing] =
        edges.map(|e| e.into_iter().reduce(|a, b| a * b).expect("three axes"));
    let union = pred_volume + target_volume - inter.clone();
    let iou = inter / union.clone().clamp_min(1e-6);
    let giou = iou - (enclosing.clone() - union) / enclosing.clamp_min(1e-6);
    giou.neg().add_scalar(1.0).reshape([p])
}

/// Classification focal loss of `[B, classes]` logits against class indices, as the reference's MONAI
/// `FocalLoss` (sigmoid form on one-hot targets, mean over every element).
pub fn classification_focal_loss<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    gamma: f64,
) -> Tensor<B, 1> {
    let [b, k] = logits.dims();
    let mut onehot = vec![0f32; b * k];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * k + l] = 1.0;
    }
    let target = Tensor::from_data(
        burn::tensor::TensorData::new(onehot, [b, k]),
        &logits.device(),
    );
    sigmoid_focal_loss(logits, target, gamma, None).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuAutodiff;
    use burn::tensor::TensorData;

    type B = CpuAutodiff;

    fn t5(v: Vec<f32>, shape: [usize; 5]) -> Tensor<B, 5> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn dice_is_near_zero_for_a_perfect_prediction_and_one_for_a_miss() {
        let cfg = DiceConfig::new().with_smooth_nr(1e-5).with_smooth_dr(1e-5);
        let target = t5(vec![1.0, 1.0, 0.0, 0.0], [1, 1, 1, 2, 2]);
        let good = t5(vec![20.0, 20.0, -20.0, -20.0], [1, 1, 1, 2, 2]);
        let bad = t5(vec![-20.0, -20.0, 20.0, 20.0], [1, 1, 1, 2, 2]);
        let g: f32 = dice_loss(&cfg, good, target.clone()).into_scalar();
        let b: f32 = dice_loss(&cfg, bad, target).into_scalar();
        assert!(g < 1e-4, "{g}");
        assert!(b > 0.999, "{b}");
    }

    /// Sample 0: 200 target voxels, all predicted at p = σ(3) ≈ 0.953; sample 1: an empty target with
    /// the same 200 voxels predicted (a whole core marked enhancing).
    fn one_hit_one_false_alarm() -> (Tensor<B, 5>, Tensor<B, 5>) {
        let shape = [2, 1, 1, 10, 20];
        let mut target = vec![1.0f32; 200];
        target.extend(vec![0.0f32; 200]);
        (t5(vec![3.0; 400], shape).require_grad(), t5(target, shape))
    }

    #[test]
    fn batch_dice_pools_the_samples_and_keeps_pushing_back_false_positives() {
        let p = 1.0 / (1.0 + (-3.0f64).exp());
        let (n, s) = (200.0, 1.0);
        // pooled: (2·Σpt + s) / (Σp² + Σt² + s) over both samples
        let expected = 1.0 - (2.0 * n * p + s) / (2.0 * n * p * p + n + s);
        let pooled = DiceConfig::new().with_batch_dice(true);
        let (logits, target) = one_hit_one_false_alarm();
        let loss = dice_loss(&pooled, logits.clone(), target);
        let value: f32 = loss.clone().into_scalar();
        assert!(
            (value as f64 - expected).abs() < 1e-5,
            "{value} vs {expected}"
        );
        let pooled_grad = logits
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();

        let (logits, target) = one_hit_one_false_alarm();
        let loss = dice_loss(&DiceConfig::new(), logits.clone(), target);
        let per_sample_grad = logits
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // d loss / d logit on a false positive of sample 1: pooled ≈ 1.0e-4, per sample ≈ 1.3e-6
        let (pooled_fp, per_sample_fp) = (pooled_grad[300], per_sample_grad[300]);
        assert!(pooled_fp > 0.0 && per_sample_fp > 0.0);
        assert!(
            pooled_fp > 20.0 * per_sample_fp,
            "pooled {pooled_fp:e} vs per sample {per_sample_fp:e}"
        );
    }

    #[test]
    fn dice_penalises_false_positives_on_an_empty_target() {
        let cfg = DiceConfig::new();
        let empty = t5(vec![0.0; 4], [1, 1, 1, 2, 2]);
        let quiet: f32 =
            dice_loss(&cfg, t5(vec![-20.0; 4], [1, 1, 1, 2, 2]), empty.clone()).into_scalar();
        assert!(
            quiet < 0.01,
            "empty prediction on empty target should score ~0, got {quiet}"
        );

        let logits = t5(vec![0.0, 1.0, -1.0, 2.0], [1, 1, 1, 2, 2]).require_grad();
        let loss = dice_loss(&cfg, logits.clone(), empty.clone());
        let value: f32 = loss.clone().into_scalar();
        // Σp² ≈ 1.632 → 1 − 1/2.632
        assert!(
            (value - 0.620).abs() < 1e-3,
            "false positives should be penalised, got {value}"
        );
        let grads = loss.backward();
        let g: Vec<f32> = logits.grad(&grads).unwrap().to_data().to_vec().unwrap();
        // every logit is pushed down
        assert!(g.iter().all(|&v| v.is_finite() && v > 0.0), "{g:?}");

        // the reference's smooth_nr = 0 gives the same constant loss with a gradient of exactly zero
        let reference = DiceConfig::new().with_smooth_nr(0.0).with_smooth_dr(1e-6);
        let logits = t5(vec![0.0, 1.0, -1.0, 2.0], [1, 1, 1, 2, 2]).require_grad();
        let loss = dice_loss(&reference, logits.clone(), empty);
        let grads = loss.backward();
        let g: Vec<f32> = logits.grad(&grads).unwrap().to_data().to_vec().unwrap();
        assert!(g.iter().all(|&v| v == 0.0), "{g:?}");
    }

    #[test]
    fn focal_loss_matches_the_formula() {
        let x = Tensor::<B, 1>::from_floats([2.0, -1.0, 0.5], &Default::default());
        let t = Tensor::<B, 1>::from_floats([1.0, 0.0, 0.0], &Default::default());
        let got: Vec<f32> = sigmoid_focal_loss(x, t, 2.0, Some(0.25))
            .to_data()
            .to_vec()
            .unwrap();
        let expect = |x: f32, t: f32| {
            let p = 1.0 / (1.0 + (-x).exp());
            let pt = if t == 1.0 { p } else { 1.0 - p };
            let a = if t == 1.0 { 0.25 } else { 0.75 };
            -a * (1.0 - pt).powi(2) * pt.ln()
        };
        for (g, e) in got
            .iter()
            .zip([expect(2.0, 1.0), expect(-1.0, 0.0), expect(0.5, 0.0)])
        {
            assert!((g - e).abs() < 1e-6, "{g} vs {e}");
        }
    }

    #[test]
    fn giou_loss_equals_a_direct_computation() {
        let device = Default::default();
        let anchors = [
            [10.0f32, 10.0, 10.0, 26.0, 26.0, 26.0],
            [0.0, 0.0, 0.0, 8.0, 8.0, 8.0],
        ];
        let deltas = [
            [0.1f32, -0.2, 0.05, 0.2, -0.1, 0.3],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ];
        // the second target lies apart from its box: IoU 0, GIoU below 0
        let targets = [
            [12.0f32, 8.0, 11.0, 30.0, 24.0, 33.0],
            [12.0, 0.0, 0.0, 20.0, 8.0, 8.0],
        ];
        let t = |rows: &[[f32; 6]; 2]| {
            Tensor::<B, 2>::from_data(
                burn::tensor::TensorData::new(rows.concat(), [2, 6]),
                &device,
            )
        };
        let got: Vec<f32> = giou_loss(t(&deltas), t(&anchors), t(&targets))
            .into_data()
            .to_vec()
            .unwrap();
        for i in 0..2 {
            let pred = crate::decoder::detection::box_coder::decode(&anchors[i], &deltas[i]);
            let (b, g) = (pred, targets[i]);
            let vol = |x: &[f32; 6]| (0..3).map(|a| x[a + 3] - x[a]).product::<f32>();
            let inter: f32 = (0..3)
                .map(|a| (b[a + 3].min(g[a + 3]) - b[a].max(g[a])).max(0.0))
                .product();
            let hull: f32 = (0..3)
                .map(|a| b[a + 3].max(g[a + 3]) - b[a].min(g[a]))
                .product();
            let union = vol(&b) + vol(&g) - inter;
            let expected = 1.0 - (inter / union - (hull - union) / hull);
            assert!(
                (got[i] - expected).abs() < 1e-5,
                "box {i}: {} vs {expected}",
                got[i]
            );
        }
        assert!(
            got[1] > 1.0,
            "apart boxes have negative GIoU: loss {}",
            got[1]
        );
        // a perfect box costs nothing
        let exact = giou_loss(
            Tensor::<B, 2>::zeros([1, 6], &device),
            Tensor::<B, 2>::from_floats([[2.0, 3.0, 4.0, 9.0, 9.0, 9.0]], &device),
            Tensor::<B, 2>::from_floats([[2.0, 3.0, 4.0, 9.0, 9.0, 9.0]], &device),
        );
        assert!(exact.into_scalar().abs() < 1e-6);
    }

    #[test]
    fn smooth_l1_is_quadratic_then_linear() {
        let p = Tensor::<B, 1>::from_floats([0.05, -1.0, 0.0], &Default::default());
        let t = Tensor::<B, 1>::zeros([3], &Default::default());
        let got: Vec<f32> = smooth_l1(p, t, 0.1).to_data().to_vec().unwrap();
        assert!((got[0] - 0.5 * 0.0025 / 0.1).abs() < 1e-7);
        assert!((got[1] - 0.95).abs() < 1e-6);
        assert_eq!(got[2], 0.0);
    }
}
