//! 3D convolution for the CPU backend, forward and backward, as tiled matrix products.
//!
//! burn 0.21's `flex` backend convolves through a channels-last copy of the input, an im2col
//! gather of 512 outputs at a time with a bounds check per element, a matrix product into a
//! fresh buffer and a scatter into the output. Its weight gradient is a convolution whose kernel
//! is the whole output volume, and its input gradient a transposed convolution. A profile of the
//! `reference` preset's training step put those at more than half of the time, with the matrix
//! products themselves about a quarter.
//!
//! Here every convolution of a batch item is one matrix product per tile of output rows:
//! `out[co, t] = Σ_{ci,k} w[co, ci, k] · col[(ci, k), t]`, where a tile's `col` holds, for each
//! input channel and kernel offset, the input row segments under the tile's output rows, copied
//! whole (a `memcpy` per output row at stride 1) with the padding's zeros at their ends. The
//! products write straight into the output, tiles run in parallel, and nothing but the tile's
//! `col` (about a megabyte: larger and smaller tiles both measured slower) is allocated beside
//! the output.
//! - The weight gradient reuses the same `col` tiles: `dw += grad_tile · colᵀ`, one accumulator
//!   per worker, summed in a fixed order, so results do not depend on scheduling.
//! - The input gradient of a stride-1 convolution is the convolution of the output gradient with
//!   the flipped, transposed kernel, padded by `dilation·(k−1) − padding`: the same forward code.
//!   Strided convolutions scatter each tile's `wᵀ · grad_tile` back onto the input (col2im).
//!
//! `model/benches/conv3d.sh` times the three on the preset's heaviest layer shapes against
//! PyTorch's oneDNN kernels.
//!
//! [`conv3d`] uses this for burn's `Flex` and `Autodiff<Flex>` and falls back to burn's own
//! convolution on every other backend (CUDA) and for grouped or "same"-padded convolutions.

use burn::nn::PaddingConfig3d;
use burn::nn::conv::Conv3d;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv3d as burn_conv3d;
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::cpu::{SharedMut, Strided, cast, dims, flex, product, recast, zeroed};
use crate::{CpuAutodiff, CpuBackend};

/// Applies a burn `Conv3d` module to `x`, through the tiled kernels here on the CPU backend.
///
/// Equal to `conv.forward(x)` up to the order of floating-point sums.
pub fn conv3d<B: Backend>(conv: &Conv3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let padding = match conv.padding {
        PaddingConfig3d::Valid => [0, 0, 0],
        PaddingConfig3d::Explicit(d, h, w) => [d, h, w],
        PaddingConfig3d::Same => return conv.forward(x),
    };
    if conv.groups != 1 {
        return conv.forward(x);
    }
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, 1);
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|bias| bias.val());
    conv3d_tensors(x, weight, bias, options)
}

/// [`conv3d`] on tensors: `x` `[N, Cin, D, H, W]`, `weight` `[Cout, Cin, kD, kH, kW]`, `bias` `[Cout]`;
/// `options.groups` must be 1.
pub fn conv3d_tensors<B: Backend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<3>,
) -> Tensor<B, 5> {
    type Args<B> = (Tensor<B, 5>, Tensor<B, 5>, Option<Tensor<B, 1>>);
    // The backend is a type parameter; the two CPU backends are recognised at run time (no
    // specialisation in stable Rust) by moving the arguments through `Any`.
    let args: Args<B> = (x, weight, bias);
    let args = match cast::<_, Args<CpuAutodiff>>(args) {
        Ok((x, weight, bias)) => return recast(autodiff_conv3d(x, weight, bias, options)),
        Err(args) => args,
    };
    let args = match cast::<_, Args<CpuBackend>>(args) {
        Ok((x, weight, bias)) => {
            let out = forward_primitive(
                x.into_primitive().tensor(),
                &weight.into_primitive().tensor(),
                bias.map(|b| b.into_primitive().tensor()).as_ref(),
                &options,
            );
            return recast(Tensor::<CpuBackend, 5>::from_primitive(
                TensorPrimitive::Float(out),
            ));
        }
        Err(args) => args,
    };
    let (x, weight, bias) = args;
    burn_conv3d(x, weight, bias, options)
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub input: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub output: [usize; 3],
}

impl Geometry {
    /// The geometry of `x` convolved with `weight`; `None` when the kernel does not fit.
    pub fn new(x: [usize; 5], weight: [usize; 5], options: &ConvOptions<3>) -> Option<Self> {
        let mut output = [0; 3];
        for a in 0..3 {
            let span = options.dilation[a] * (weight[2 + a].checked_sub(1)?) + 1;
            let padded = x[2 + a] + 2 * options.padding[a];
            output[a] = padded.checked_sub(span)? / options.stride[a] + 1;
        }
        (x[1] == weight[1] && options.stride.iter().all(|&s| s > 0)).then_some(Self {
            batch: x[0],
            channels_in: x[1],
            channels_out: weight[0],
            input: [x[2], x[3], x[4]],
            kernel: [weight[2], weight[3], weight[4]],
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
            output,
        })
    }

    fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }
    fn input_volume(&self) -> usize {
        self.input.iter().product()
    }
    fn output_volume(&self) -> usize {
        self.output.iter().product()
    }
    /// Rows of `col`: one per input channel and kernel offset.
    fn col_rows(&self) -> usize {
        self.channels_in * self.kernel_volume()
    }
    /// A 1×1×1 kernel at stride 1 without padding: the input itself is the `col` matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1, 1] && self.stride == [1, 1, 1] && self.padding == [0, 0, 0]
    }

    /// Tiles of whole output rows (fixed depth and height), as (batch item, first row, rows),
    /// sized so that a tile's `col` stays near a megabyte and every worker gets several tiles.
    fn tiles(&self) -> Vec<(usize, usize, usize)> {
        const COL_BYTES: usize = 1 << 20;
        let row = self.output[2];
        let rows = self.output[0] * self.output[1];
        let by_cache = (COL_BYTES / (4 * self.col_rows() * row).max(1)).max(1);
        let by_workers = rows.div_ceil(4 * rayon::current_num_threads()).max(1);
        let per_tile = by_cache.min(by_workers);
        (0..self.batch)
            .flat_map(|n| {
                (0..rows)
                    .step_by(per_tile)
                    .map(move |first| (n, first, per_tile.min(rows - first)))
            })
            .collect()
    }

    /// The geometry of the input gradient as a forward convolution of the output gradient with
    /// the flipped, transposed kernel, when there is one (stride 1, padding within the span).
    fn input_gradient(&self) -> Option<Self> {
        if self.stride != [1, 1, 1] {
            return None;
        }
        let mut padding = [0; 3];
        for (a, p) in padding.iter_mut().enumerate() {
            *p = (self.dilation[a] * (self.kernel[a] - 1)).checked_sub(self.padding[a])?;
        }
        Some(Self {
            batch: self.batch,
            channels_in: self.channels_out,
            channels_out: self.channels_in,
            input: self.output,
            kernel: self.kernel,
            stride: [1, 1, 1],
            padding,
            dilation: self.dilation,
            output: self.input,
        })
    }
}

/// The output positions `o` in `0..len` whose input index `o·stride − padding + offset` lies in
/// `0..size`, as a range, with the input index of its first element.
fn valid_range(
    len: usize,
    size: usize,
    stride: usize,
    padding: usize,
    offset: usize,
) -> (usize, usize, usize) {
    // o·s + offset ≥ padding  and  o·s + offset < size + padding
    let lo = padding.saturating_sub(offset).div_ceil(stride).min(len);
    let hi = if size + padding > offset {
        (size + padding - offset).div_ceil(stride).min(len)
    } else {
        0
    };
    let hi = hi.max(lo);
    (lo, hi, (lo * stride + offset).saturating_sub(padding))
}

/// One output row's stretch of a `col` row: the output positions `lo..hi` of the row read the input
/// row at `input` (offset in the batch item's input), from column `first_w` at the stride; the
/// positions outside `lo..hi`, and the whole row when `input` is `None`, read padding.
struct Segment {
    input: Option<usize>,
    lo: usize,
    hi: usize,
    first_w: usize,
}

/// Walks a tile's `col` matrix (`col_rows × rows·Wo`, rows of output `first..first + rows`): calls
/// `visit(col_row, output_row_in_tile, segment)` for every input channel and kernel offset (the
/// `col` row) and every output row of the tile.
fn walk_tile(
    g: &Geometry,
    first: usize,
    rows: usize,
    mut visit: impl FnMut(usize, usize, Segment),
) {
    let [d, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    let ho = g.output[1];
    let volume = d * h * w;
    let mut col_row = 0;
    for channel in 0..g.channels_in {
        for a in 0..kd {
            for b in 0..kh {
                for c in 0..kw {
                    let offset_w = c * g.dilation[2];
                    let (lo, hi, first_w) =
                        valid_range(g.output[2], w, g.stride[2], g.padding[2], offset_w);
                    for (slot, r) in (first..first + rows).enumerate() {
                        let (od, oh) = (r / ho, r % ho);
                        let id = (od * g.stride[0] + a * g.dilation[0]).checked_sub(g.padding[0]);
                        let ih = (oh * g.stride[1] + b * g.dilation[1]).checked_sub(g.padding[1]);
                        let input = match (id, ih) {
                            (Some(id), Some(ih)) if id < d && ih < h && lo < hi => {
                                Some(channel * volume + (id * h + ih) * w)
                            }
                            _ => None,
                        };
                        visit(
                            col_row,
                            slot,
                            Segment {
                                input,
                                lo,
                                hi,
                                first_w,
                            },
                        );
                    }
                    col_row += 1;
                }
            }
        }
    }
}

/// Fills `col` (`col_rows × rows·Wo`) with the input under output rows `first..first + rows` of
/// one batch item's input `x` (`Cin × D × H × W`): the gather of im2col.
fn fill_col(col: &mut [f32], x: &[f32], g: &Geometry, first: usize, rows: usize) {
    let [w, wo, stride] = [g.input[2], g.output[2], g.stride[2]];
    let width = rows * wo;
    walk_tile(g, first, rows, |col_row, slot, s| {
        let out = &mut col[col_row * width + slot * wo..][..wo];
        let Some(input) = s.input else {
            out.fill(0.0);
            return;
        };
        let row = &x[input..][..w];
        out[..s.lo].fill(0.0);
        out[s.hi..].fill(0.0);
        if stride == 1 {
            out[s.lo..s.hi].copy_from_slice(&row[s.first_w..s.first_w + s.hi - s.lo]);
        } else {
            let values = row[s.first_w..].iter().step_by(stride);
            out[s.lo..s.hi]
                .iter_mut()
                .zip(values)
                .for_each(|(o, v)| *o = *v);
        }
    });
}

/// Adds `col` back onto the input positions it was gathered from (`x`: one batch item's
/// `Cin × D × H × W`): the scatter of col2im, which the input gradient of a strided convolution is.
fn scatter_col(col: &[f32], x: &mut [f32], g: &Geometry, first: usize, rows: usize) {
    let [w, wo, stride] = [g.input[2], g.output[2], g.stride[2]];
    let width = rows * wo;
    walk_tile(g, first, rows, |col_row, slot, s| {
        let Some(input) = s.input else {
            return;
        };
        let values = &col[col_row * width + slot * wo..][s.lo..s.hi];
        let row = &mut x[input..][..w];
        let targets = row[s.first_w..].iter_mut().step_by(stride);
        targets.zip(values).for_each(|(t, v)| *t += v);
    });
}

/// The convolution of `x` (`N × Cin × D × H × W`) with `weight` (`Cout × Cin × kD × kH × kW`) plus
/// `bias`, as `N × Cout × Do × Ho × Wo`.
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geometry) -> Vec<f32> {
    let (cols, out_volume) = (g.col_rows(), g.output_volume());
    let in_volume = g.channels_in * g.input_volume();
    assert_eq!(x.len(), g.batch * in_volume, "input length");
    assert_eq!(weight.len(), g.channels_out * cols, "weight length");
    let mut out = zeroed(g.batch * g.channels_out * out_volume);
    let shared = SharedMut(out.as_mut_ptr());
    let wo = g.output[2];
    g.tiles()
        .into_par_iter()
        .for_each_init(Vec::new, |col, (n, first, rows)| {
            let width = rows * wo;
            let x_n = &x[n * in_volume..][..in_volume];
            let (rhs, rhs_rs) = if g.is_pointwise() {
                (x_n[first * wo..].as_ptr(), g.input_volume())
            } else {
                col.resize(cols * width, 0.0);
                fill_col(&mut col[..cols * width], x_n, g, first, rows);
                (col.as_ptr(), width)
            };
            // This tile's output columns `first·Wo .. first·Wo + width` of each channel of batch
            // item `n`, written by this tile only.
            let dst = shared.at(n * g.channels_out * out_volume + first * wo);
            if let Some(bias) = bias {
                for (c, &b) in bias.iter().enumerate() {
                    // SAFETY: row `c` of this tile: `width` values inside `out`, written by this tile only.
                    unsafe { std::slice::from_raw_parts_mut(dst.add(c * out_volume), width) }
                        .fill(b);
                }
            }
            // SAFETY: lhs is `Cout × cols` row-major, rhs `cols × width` with row stride
            // `rhs_rs`, dst `Cout × width` with row stride `out_volume`; all in bounds.
            unsafe {
                product(
                    [g.channels_out, width, cols],
                    dst,
                    [out_volume, 1],
                    bias.is_some(),
                    Strided {
                        ptr: weight.as_ptr(),
                        row: cols,
                        col: 1,
                    },
                    Strided {
                        ptr: rhs,
                        row: rhs_rs,
                        col: 1,
                    },
                    1.0,
                );
            }
        });
    out
}

/// The gradient of the weight, `Cout × Cin × kD × kH × kW`, from the input and the output gradient.
pub fn weight_gradient(x: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let (cols, out_volume) = (g.col_rows(), g.output_volume());
    let in_volume = g.channels_in * g.input_volume();
    assert_eq!(x.len(), g.batch * in_volume, "input length");
    assert_eq!(
        grad.len(),
        g.batch * g.channels_out * out_volume,
        "gradient length"
    );
    let wo = g.output[2];
    accumulate_tiles(g, g.channels_out * cols, |acc, col, (n, first, rows)| {
        let width = rows * wo;
        let x_n = &x[n * in_volume..][..in_volume];
        let (rhs, rhs_cs) = if g.is_pointwise() {
            (x_n[first * wo..].as_ptr(), g.input_volume())
        } else {
            col.resize(cols * width, 0.0);
            fill_col(col, x_n, g, first, rows);
            (col.as_ptr(), width)
        };
        let lhs = grad[n * g.channels_out * out_volume + first * wo..].as_ptr();
        // SAFETY: dst `Cout × cols` row-major; lhs `Cout × width` with row stride
        // `out_volume`; rhs is `colᵀ`, `width × cols`, column stride `rhs_cs`.
        unsafe {
            product(
                [g.channels_out, cols, width],
                acc.as_mut_ptr(),
                [cols, 1],
                true,
                Strided {
                    ptr: lhs,
                    row: out_volume,
                    col: 1,
                },
                Strided {
                    ptr: rhs,
                    row: 1,
                    col: rhs_cs,
                },
                1.0,
            );
        }
    })
}

/// Runs `per_tile(accumulator, col, tile)` over the tiles in contiguous groups, one group per
/// worker, each adding into a `len`-value accumulator of its own and reusing one `col` buffer;
/// returns the accumulators' sum, taken in group order so that the result does not depend on
/// which thread ran which group.
fn accumulate_tiles(
    g: &Geometry,
    len: usize,
    per_tile: impl Fn(&mut [f32], &mut Vec<f32>, (usize, usize, usize)) + Sync,
) -> Vec<f32> {
    let tiles = g.tiles();
    let workers = rayon::current_num_threads().min(tiles.len()).max(1);
    let partials: Vec<Vec<f32>> = tiles
        .chunks(tiles.len().div_ceil(workers).max(1))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|group| {
            let mut acc = zeroed(len);
            let mut col = Vec::new();
            for &tile in group {
                per_tile(&mut acc, &mut col, tile);
            }
            acc
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![0f32; len]);
    for partial in partials {
        total.iter_mut().zip(&partial).for_each(|(t, p)| *t += p);
    }
    total
}

/// The gradient of the input, `N × Cin × D × H × W`.
///
/// At stride 1 it is a forward convolution of `grad` with the flipped, transposed kernel. Otherwise
/// each tile's `col` gradient, `wᵀ · grad_tile`, is scattered back onto the input positions it
/// came from; tiles overlap there, so each worker adds into an input-sized buffer of its own,
/// and the buffers are summed in order.
pub fn input_gradient(weight: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    match g.input_gradient() {
        Some(transposed) => forward(grad, &flipped_transposed(weight, g), None, &transposed),
        None => scattered_input_gradient(weight, grad, g),
    }
}

/// `w'[ci, co, k'] = w[co, ci, K−1−k']`: the kernel flipped along all three axes, channels swapped.
fn flipped_transposed(weight: &[f32], g: &Geometry) -> Vec<f32> {
    let k = g.kernel_volume();
    let mut flipped = vec![0f32; weight.len()];
    for co in 0..g.channels_out {
        for ci in 0..g.channels_in {
            let src = &weight[(co * g.channels_in + ci) * k..][..k];
            let dst = &mut flipped[(ci * g.channels_out + co) * k..][..k];
            dst.iter_mut()
                .zip(src.iter().rev())
                .for_each(|(d, s)| *d = *s);
        }
    }
    flipped
}

fn scattered_input_gradient(weight: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let (cols, out_volume) = (g.col_rows(), g.output_volume());
    let in_volume = g.channels_in * g.input_volume();
    assert_eq!(
        grad.len(),
        g.batch * g.channels_out * out_volume,
        "gradient length"
    );
    let wo = g.output[2];
    accumulate_tiles(g, g.batch * in_volume, |acc, col, (n, first, rows)| {
        let width = rows * wo;
        col.resize(cols * width, 0.0);
        let rhs = grad[n * g.channels_out * out_volume + first * wo..].as_ptr();
        // SAFETY: dst `col` is `cols × width` row-major; lhs is `wᵀ`, `cols × Cout` (column
        // stride `cols`); rhs `Cout × width` with row stride `out_volume`.
        unsafe {
            product(
                [cols, width, g.channels_out],
                col.as_mut_ptr(),
                [width, 1],
                false,
                Strided {
                    ptr: weight.as_ptr(),
                    row: 1,
                    col: cols,
                },
                Strided {
                    ptr: rhs,
                    row: out_volume,
                    col: 1,
                },
                1.0,
            );
        }
        scatter_col(col, &mut acc[n * in_volume..][..in_volume], g, first, rows);
    })
}

/// The gradient of the bias: the output gradient summed over batch and space.
pub fn bias_gradient(grad: &[f32], g: &Geometry) -> Vec<f32> {
    let volume = g.output_volume();
    let mut total = vec![0f32; g.channels_out];
    for item in grad.chunks_exact(g.channels_out * volume) {
        for (t, channel) in total.iter_mut().zip(item.chunks_exact(volume)) {
            *t += channel.iter().map(|&v| v as f64).sum::<f64>() as f32;
        }
    }
    total
}

/// The forward convolution on `Flex` tensors; burn's own for what [`Geometry`] does not cover.
fn forward_primitive(
    x: FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<3>,
) -> FlexTensor {
    let geometry = Geometry::new(dims::<5>(&x), dims::<5>(weight), options);
    let (Some(g), DType::F32) = (geometry, x.dtype()) else {
        return CpuBackend::conv3d(x, weight.clone(), bias.cloned(), options.clone());
    };
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let bias = bias.map(FlexTensor::to_contiguous);
    let out = forward(
        x.storage::<f32>(),
        weight.storage::<f32>(),
        bias.as_ref().map(|b| b.storage::<f32>()),
        &g,
    );
    let [d, h, w] = g.output;
    flex(out, vec![g.batch, g.channels_out, d, h, w])
}

/// What the backward pass needs: the input, the weight and the options.
type ConvState = (FlexTensor, FlexTensor, ConvOptions<3>);

#[derive(Debug)]
struct Conv3dBackward;

impl Conv3dBackward {
    fn gradients(state: ConvState, grad: FlexTensor, wants: [bool; 3]) -> [Option<FlexTensor>; 3] {
        let (x, weight, options) = state;
        let (x, weight, grad) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        let Some(g) = Geometry::new(dims::<5>(&x), dims::<5>(&weight), &options) else {
            unreachable!("the forward pass accepted this geometry")
        };
        let input = wants[0].then(|| {
            flex(
                input_gradient(weight.storage::<f32>(), grad.storage::<f32>(), &g),
                dims::<5>(&x).to_vec(),
            )
        });
        let weight_grad = wants[1].then(|| {
            flex(
                weight_gradient(x.storage::<f32>(), grad.storage::<f32>(), &g),
                dims::<5>(&weight).to_vec(),
            )
        });
        let bias = wants[2].then(|| {
            flex(
                bias_gradient(grad.storage::<f32>(), &g),
                vec![g.channels_out],
            )
        });
        [input, weight_grad, bias]
    }
}

impl Backward<CpuBackend, 3> for Conv3dBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<CpuBackend>(&ops.node);
        let wants = ops.parents.each_ref().map(Option::is_some);
        let results = Self::gradients(ops.state, grad, wants);
        for (parent, result) in ops.parents.into_iter().zip(results) {
            if let (Some(node), Some(result)) = (parent, result) {
                grads.register::<CpuBackend>(node.id, result);
            }
        }
    }
}

impl Backward<CpuBackend, 2> for Conv3dBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<CpuBackend>(&ops.node);
        let [x_node, w_node] = ops.parents;
        let [input, weight, _] =
            Self::gradients(ops.state, grad, [x_node.is_some(), w_node.is_some(), false]);
        for (node, result) in [(x_node, input), (w_node, weight)] {
            if let (Some(node), Some(result)) = (node, result) {
                grads.register::<CpuBackend>(node.id, result);
            }
        }
    }
}

/// The convolution as one node of burn's autodiff graph, with the backward pass above.
fn autodiff_conv3d(
    x: Tensor<CpuAutodiff, 5>,
    weight: Tensor<CpuAutodiff, 5>,
    bias: Option<Tensor<CpuAutodiff, 1>>,
    options: ConvOptions<3>,
) -> Tensor<CpuAutodiff, 5> {
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let bias = bias.map(|b| b.into_primitive().tensor());
    let geometry = Geometry::new(
        dims::<5>(&x.primitive),
        dims::<5>(&weight.primitive),
        &options,
    );
    if geometry.is_none() || x.primitive.dtype() != DType::F32 {
        let out = <CpuAutodiff as ModuleOps<CpuAutodiff>>::conv3d(x, weight, bias, options);
        return Tensor::from_primitive(TensorPrimitive::Float(out));
    }
    let out = forward_primitive(
        x.primitive.clone(),
        &weight.primitive,
        bias.as_ref().map(|b| &b.primitive),
        &options,
    );
    let state = (x.primitive.clone(), weight.primitive.clone(), options);
    let out = match bias {
        Some(bias) => match Conv3dBackward
            .prepare::<burn_autodiff::checkpoint::strategy::NoCheckpointing>([
                x.node.clone(),
                weight.node.clone(),
                bias.node.clone(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        None => match Conv3dBackward
            .prepare::<burn_autodiff::checkpoint::strategy::NoCheckpointing>([
                x.node.clone(),
                weight.node.clone(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
