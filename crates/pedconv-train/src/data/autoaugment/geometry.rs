//! AutoAugment's geometric operations as PIL computes them: affine maps with nearest-neighbour
//! (translations, rotations) and bicubic (shears) sampling, the uncovered area filled. Written
//! out over the raw pixels: the augmentation runs on every training image.

use image::RgbImage;

use super::FILL;

/// PIL's `Image.transform(size, AFFINE, a, NEAREST, fillcolor=128)`: output pixel `(x, y)` takes
/// the source pixel containing `a · (x + ½, y + ½, 1)`, the fill when there is none.
///
/// Computed as imageproc's nearest-neighbour `warp` computes it, to the bit, without its
/// per-pixel generic calls: the pixel index `p` mapped in single precision by the affine map
/// `a · (p + ½) - ½` (a translation adds its offsets only), rounded to the nearest source pixel
/// as `floor(v + ½)`. PIL walks the coordinates in 16.16 fixed point, so where they lie within
/// its rounding (about 1e-3 on a small image) of a pixel boundary the two may take
/// neighbouring pixels.
pub fn affine_nearest(image: &RgbImage, a: [f64; 6]) -> RgbImage {
    let [a0, a1, a2, a3, a4, a5] = a;
    let t = [
        a0,
        a1,
        (a0 + a1) / 2.0 + a2 - 0.5,
        a3,
        a4,
        (a3 + a4) / 2.0 + a5 - 0.5,
    ]
    .map(|v| v as f32);
    // imageproc's classification of the map (its tolerance on single-precision coefficients).
    let translation = (t[0] - 1.0).abs() < 1e-10
        && t[1].abs() < 1e-10
        && t[3].abs() < 1e-10
        && (t[4] - 1.0).abs() < 1e-10;
    // `floor` of a coordinate by truncation (the same value, without a library call).
    let floor = |v: f32| {
        let truncated = v as i64;
        if (truncated as f32) > v {
            truncated - 1
        } else {
            truncated
        }
    };
    let (w, h) = image.dimensions();
    let (width, height) = (w as i64, h as i64);
    let source = image.as_raw();
    let mut out = vec![0u8; source.len()];
    for (y, row) in out.chunks_exact_mut(3 * w as usize).enumerate() {
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let (x, y) = (x as f32, y as f32);
            let (px, py) = if translation {
                (x + t[2], y + t[5])
            } else {
                (t[0] * x + t[1] * y + t[2], t[3] * x + t[4] * y + t[5])
            };
            let (sx, sy) = (floor(px + 0.5), floor(py + 0.5));
            if sx < 0 || sx >= width || sy < 0 || sy >= height {
                pixel.copy_from_slice(&FILL.0);
            } else {
                let at = 3 * (sy * width + sx) as usize;
                pixel.copy_from_slice(&source[at..at + 3]);
            }
        }
    }
    RgbImage::from_raw(w, h, out).expect("an image of the input's size")
}

/// PIL's `rotate(degrees)` (counter-clockwise about the centre, nearest neighbour), the uncovered
/// area filled as the policy does.
pub fn rotate(image: &RgbImage, degrees: f64) -> RgbImage {
    let (cx, cy) = (
        f64::from(image.width()) / 2.0,
        f64::from(image.height()) / 2.0,
    );
    let (sin, cos) = degrees.to_radians().sin_cos();
    // PIL's inverse map: the rotation by -degrees about the centre.
    let a = [cos, -sin, 0.0, sin, cos, 0.0];
    let c = a[0] * -cx + a[1] * -cy + cx;
    let f = a[3] * -cx + a[4] * -cy + cy;
    affine_nearest(image, [a[0], a[1], c, a[3], a[4], f])
}

/// PIL's `Image.transform(size, AFFINE, a, BICUBIC, fillcolor=128)`: output pixel `(x, y)`
/// interpolates the source around `a · (x + ½, y + ½, 1)`, the fill when that lies outside the
/// image.
///
/// Written here because imageproc's bicubic warp cannot match PIL: it uses the Catmull-Rom
/// kernel (a = -½) where PIL uses a = -1, truncates each row's interpolation to 8 bits, and takes
/// the border colour for neighbours outside the image where PIL clamps them to the edge. On the
/// fixtures (`tests/fixtures/autoaugment/README.md`) two thirds of the pixels differ, by up to 65
/// levels (up to 16 with `Border::Replicate` and PIL's fill applied afterwards).
pub fn affine_bicubic(image: &RgbImage, a: [f64; 6]) -> RgbImage {
    // `f64::floor` of a coordinate inside the image (from -0.5), by truncation: the same value,
    // without the library call that x86-64's baseline instruction set makes of `floor`.
    let floor = |v: f64| {
        let truncated = v as i64 as f64;
        if truncated > v {
            truncated - 1.0
        } else {
            truncated
        }
    };
    let (w, h) = image.dimensions();
    let (width, height) = (w as usize, h as usize);
    let source = image.as_raw();
    // PIL's cubic through four samples at `d` in [0, 1) between the second and third; at
    // `d = 0` exactly it is the second sample, which is all a shear needs along its fixed axis.
    let cubic = |v: [f64; 4], d: f64| {
        let [v1, v2, v3, v4] = v;
        let (p1, p2, p3, p4) = (v2, -v1 + v3, 2.0 * (v1 - v2) + v3 - v4, -v1 + v2 - v3 + v4);
        p1 + d * (p2 + d * (p3 + d * p4))
    };
    // The four neighbours' indices along an axis, clamped to the image as PIL does, times
    // `stride` (the subpixel offset of one step along the axis). Written out: `array::map`
    // is not inlined here and would double the time of a shear.
    let taps = |f: f64, size: usize, stride: usize| {
        let tap = |k: i64| (f as i64 + k).clamp(0, size as i64 - 1) as usize * stride;
        [tap(-1), tap(0), tap(1), tap(2)]
    };
    let mut out = vec![0u8; source.len()];
    for (y, row_out) in out.chunks_exact_mut(3 * width).enumerate() {
        for (x, pixel) in row_out.chunks_exact_mut(3).enumerate() {
            let (xin, yin) = (x as f64 + 0.5, y as f64 + 0.5);
            let sx = a[0] * xin + a[1] * yin + a[2];
            let sy = a[3] * xin + a[4] * yin + a[5];
            if sx < 0.0 || sx >= f64::from(w) || sy < 0.0 || sy >= f64::from(h) {
                pixel.copy_from_slice(&FILL.0);
                continue;
            }
            let (fx, fy) = (floor(sx - 0.5), floor(sy - 0.5));
            let (dx, dy) = (sx - 0.5 - fx, sy - 0.5 - fy);
            // The subpixel offsets of the four neighbours along each axis.
            let (columns, rows) = (taps(fx, width, 3), taps(fy, height, 3 * width));
            // The cubic along x through row `row`'s neighbours of channel `k`.
            let along_x = |row: usize, k: usize| {
                let at = |column: usize| f64::from(source[row + column + k]);
                let [c1, c2, c3, c4] = columns;
                if dx == 0.0 {
                    at(c2)
                } else {
                    cubic([at(c1), at(c2), at(c3), at(c4)], dx)
                }
            };
            for (k, value) in pixel.iter_mut().enumerate() {
                let [r1, r2, r3, r4] = rows;
                let interpolated = if dy == 0.0 {
                    along_x(r2, k)
                } else {
                    let along = |row| along_x(row, k);
                    cubic([along(r1), along(r2), along(r3), along(r4)], dy)
                };
                // `as` saturates: PIL's clip to 0..=255 before truncating.
                *value = interpolated as u8;
            }
        }
    }
    RgbImage::from_raw(w, h, out).expect("an image of the input's size")
}
