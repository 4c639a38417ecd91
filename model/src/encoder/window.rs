//! Window bookkeeping of the 3D Swin Transformer: partition, reverse, shifted-window mask and relative
//! position indices.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Value added to the attention logits of token pairs from different regions of a shifted window.
pub const SHIFT_MASK_VALUE: f32 = -100.0;

/// The window and shift actually used on a feature map: where the map is no larger than the window along
/// an axis, the window is clipped to the map and that axis is not shifted (MONAI `get_window_size`).
pub fn effective_window(dims: [usize; 3], window: usize, shift: usize) -> ([usize; 3], [usize; 3]) {
    let mut ws = [window; 3];
    let mut ss = [shift; 3];
    for i in 0..3 {
        if dims[i] <= window {
            ws[i] = dims[i];
            ss[i] = 0;
        }
    }
    (ws, ss)
}

/// Smallest multiple of the window covering each axis.
pub fn padded_dims(dims: [usize; 3], ws: [usize; 3]) -> [usize; 3] {
    [0, 1, 2].map(|i| dims[i].div_ceil(ws[i]) * ws[i])
}

/// `[B, D, H, W, C] -> [B·nW, wd·wh·ww, C]`, windows in (d, h, w) raster order.
pub fn window_partition<B: Backend>(x: Tensor<B, 5>, ws: [usize; 3]) -> Tensor<B, 3> {
    let [b, d, h, w, c] = x.dims();
    x.reshape([b, d / ws[0], ws[0], h / ws[1], ws[1], w / ws[2], ws[2], c])
        .permute([0, 1, 3, 5, 2, 4, 6, 7])
        .reshape([
            b * (d / ws[0]) * (h / ws[1]) * (w / ws[2]),
            ws[0] * ws[1] * ws[2],
            c,
        ])
}

/// Inverse of [`window_partition`]: `[B·nW, N, C] -> [B, D, H, W, C]`.
pub fn window_reverse<B: Backend>(
    windows: Tensor<B, 3>,
    ws: [usize; 3],
    [b, d, h, w]: [usize; 4],
) -> Tensor<B, 5> {
    let c = windows.dims()[2];
    windows
        .reshape([b, d / ws[0], h / ws[1], w / ws[2], ws[0], ws[1], ws[2], c])
        .permute([0, 1, 4, 2, 5, 3, 6, 7])
        .reshape([b, d, h, w, c])
}

/// Attention mask of the shifted windows, `[nW, N, N]`: 0 inside a region, −100 across regions.
///
/// After the cyclic shift a window may hold voxels from up to 8 regions of the padded map
/// (`[0, -ws)`, `[-ws, -shift)`, `[-shift, ..)` per axis, MONAI `compute_mask`); tokens of different
/// regions must not attend to each other.
pub fn shifted_window_mask<B: Backend>(
    padded: [usize; 3],
    ws: [usize; 3],
    ss: [usize; 3],
    device: &B::Device,
) -> Tensor<B, 3> {
    let region = |i: usize, axis: usize| -> usize {
        let (n, w, s) = (padded[axis], ws[axis], ss[axis]);
        if i < n - w {
            0
        } else if i < n - s {
            1
        } else {
            2
        }
    };
    let [d, h, w] = padded;
    let (nd, nh, nw) = (d / ws[0], h / ws[1], w / ws[2]);
    let n = ws[0] * ws[1] * ws[2];
    let mut mask = Vec::with_capacity(nd * nh * nw * n * n);
    let mut labels = vec![0usize; n];
    for wd in 0..nd {
        for wh in 0..nh {
            for ww in 0..nw {
                let mut t = 0;
                for a in 0..ws[0] {
                    for b in 0..ws[1] {
                        for c in 0..ws[2] {
                            let (z, y, x) = (wd * ws[0] + a, wh * ws[1] + b, ww * ws[2] + c);
                            labels[t] = region(z, 0) * 9 + region(y, 1) * 3 + region(x, 2);
                            t += 1;
                        }
                    }
                }
                for i in 0..n {
                    for j in 0..n {
                        mask.push(if labels[i] == labels[j] {
                            0.0
                        } else {
                            SHIFT_MASK_VALUE
                        });
                    }
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(mask, [nd * nh * nw, n, n]), device)
}

/// Relative position index of a window layout into a `(2·table_window − 1)³`-row bias table, as a flat
/// `N × N` row-major list (Swin's `relative_position_index`).
pub fn relative_position_index(layout: [usize; 3], table_window: [usize; 3]) -> Vec<i64> {
    let coords: Vec<[i64; 3]> = (0..layout[0])
        .flat_map(|a| {
            (0..layout[1])
                .flat_map(move |b| (0..layout[2]).map(move |c| [a as i64, b as i64, c as i64]))
        })
        .collect();
    let t = table_window.map(|w| w as i64);
    let mut index = Vec::with_capacity(coords.len() * coords.len());
    for p in &coords {
        for q in &coords {
            let r = [0, 1, 2].map(|i| p[i] - q[i] + t[i] - 1);
            index.push(r[0] * (2 * t[1] - 1) * (2 * t[2] - 1) + r[1] * (2 * t[2] - 1) + r[2]);
        }
    }
    index
}

/// The bias-table rows for an `n`-token window. `legacy`: slice the configured window's index matrix to
/// `[:n, :n]` (the reference); otherwise index the actual layout `ws`.
pub fn bias_index<B: Backend>(
    ws: [usize; 3],
    table_window: [usize; 3],
    legacy: bool,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let n = ws[0] * ws[1] * ws[2];
    let index = if legacy && ws != table_window {
        let full_n = table_window.iter().product::<usize>();
        let full = relative_position_index(table_window, table_window);
        (0..n)
            .flat_map(|i| full[i * full_n..i * full_n + n].to_vec())
            .collect()
    } else {
        relative_position_index(ws, table_window)
    };
    Tensor::from_data(TensorData::new(index, [n * n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    type B = CpuBackend;

    #[test]
    fn window_clipping_follows_monai() {
        assert_eq!(effective_window([48, 48, 48], 7, 3), ([7; 3], [3; 3]));
        assert_eq!(effective_window([6, 6, 6], 7, 3), ([6; 3], [0; 3]));
        assert_eq!(effective_window([8, 6, 7], 7, 3), ([7, 6, 7], [3, 0, 0]));
        assert_eq!(padded_dims([48, 24, 12], [7; 3]), [49, 28, 14]);
    }

    #[test]
    fn partition_then_reverse_is_identity() {
        let device = Default::default();
        let x = Tensor::<B, 5>::random(
            [2, 4, 6, 2, 3],
            burn::tensor::Distribution::Default,
            &device,
        );
        let ws = [2, 3, 2];
        let windows = window_partition(x.clone(), ws);
        assert_eq!(windows.dims(), [2 * 2 * 2, 12, 3]);
        let back = window_reverse(windows, ws, [2, 4, 6, 2]);
        assert_eq!(back.to_data(), x.to_data());
    }

    #[test]
    fn shifted_mask_separates_regions() {
        let mask = shifted_window_mask::<B>([14, 14, 14], [7; 3], [3; 3], &Default::default());
        assert_eq!(mask.dims(), [8, 343, 343]);
        let v = mask.to_data().to_vec::<f32>().unwrap();
        // the first window lies inside region 0 on every axis: no masking
        assert!(v[..343 * 343].iter().all(|&m| m == 0.0));
        // the last window mixes regions 1 and 2 on each axis: token 0 (region 1,1,1) and the last token
        // (region 2,2,2) are masked, a token against itself is not
        let last = &v[7 * 343 * 343..];
        assert_eq!(last[342], SHIFT_MASK_VALUE);
        assert_eq!(last[0], 0.0);
        // 8 regions of sizes 4 or 3 per axis: count unmasked pairs
        let zeros = last.iter().filter(|&&m| m == 0.0).count();
        let per_axis: usize = 4 * 4 + 3 * 3;
        assert_eq!(zeros, per_axis.pow(3));
    }

    #[test]
    fn relative_index_matches_swin() {
        let idx = relative_position_index([7; 3], [7; 3]);
        assert_eq!(idx.len(), 343 * 343);
        // a token against itself sits at the centre of the 13³ table
        assert_eq!(idx[0], 6 * 169 + 6 * 13 + 6);
        assert_eq!(*idx.iter().max().unwrap(), 13 * 13 * 13 - 1);
        assert_eq!(*idx.iter().min().unwrap(), 0);
        // legacy slicing for a 6³ window keeps the first 216 columns of the first 216 rows
        let legacy = bias_index::<B>([6; 3], [7; 3], true, &Default::default())
            .to_data()
            .iter::<i64>()
            .collect::<Vec<_>>();
        assert_eq!(legacy[..216], idx[..216]);
        assert_eq!(legacy[216..432], idx[343..343 + 216]);
        let exact = bias_index::<B>([6; 3], [7; 3], false, &Default::default())
            .to_data()
            .iter::<i64>()
            .collect::<Vec<_>>();
        assert_ne!(exact, legacy);
        assert_eq!(exact[0], 6 * 169 + 6 * 13 + 6);
    }
}
