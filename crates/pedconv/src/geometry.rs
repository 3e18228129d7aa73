//! Output sizes and resolved padding of a 2-D convolution.

use burn::nn::PaddingConfig2d;

use crate::Error;

/// The spatial layout of one convolution on one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Padding before the first row and column, `[top, left]`.
    pub padding_start: [usize; 2],
    /// Padding after the last row and column, `[bottom, right]`.
    pub padding_end: [usize; 2],
    /// Output size `[Ho, Wo]`.
    pub output_size: [usize; 2],
}

impl ConvGeometry {
    /// Resolves `padding` for an `input_size = [H, W]` input and computes the output size.
    ///
    /// Fails, naming the sizes, when the dilated kernel does not fit in the padded input.
    pub fn new(
        input_size: [usize; 2],
        kernel_size: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: &PaddingConfig2d,
    ) -> Result<Self, Error> {
        let mut padding_start = [0; 2];
        let mut padding_end = [0; 2];
        let mut output_size = [0; 2];
        for axis in 0..2 {
            let (start, end) = match padding {
                PaddingConfig2d::Valid => (0, 0),
                PaddingConfig2d::Same => {
                    same_padding(kernel_size[axis], stride[axis], input_size[axis])
                }
                PaddingConfig2d::Explicit(top, left, bottom, right) => {
                    [(*top, *bottom), (*left, *right)][axis]
                }
            };
            let padded = input_size[axis] + start + end;
            let extent = dilation[axis] * (kernel_size[axis] - 1) + 1;
            if extent > padded {
                return Err(Error::Shape(format!(
                    "the dilated kernel (size {kernel_size:?}, dilation {dilation:?}) spans \
                     {extent} along {}, more than the padded input ({} + {start} + {end} = {padded}) \
                     of input size {input_size:?}",
                    ["height", "width"][axis],
                    input_size[axis]
                )));
            }
            padding_start[axis] = start;
            padding_end[axis] = end;
            output_size[axis] = (padded - extent) / stride[axis] + 1;
        }
        Ok(Self {
            padding_start,
            padding_end,
            output_size,
        })
    }

    /// `Ho·Wo`.
    pub fn output_pixels(&self) -> usize {
        self.output_size[0] * self.output_size[1]
    }
}

/// `Same` padding as burn resolves it: the output has `ceil(size / stride)` entries and an odd
/// total padding puts the extra row or column at the end.
fn same_padding(kernel_size: usize, stride: usize, size: usize) -> (usize, usize) {
    let size_out = size.div_ceil(stride);
    let total = ((size_out.max(1) - 1) * stride + kernel_size).saturating_sub(size);
    (total / 2, total - total / 2)
}
