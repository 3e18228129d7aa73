//! The transforms against PIL's fixtures and their own definitions.

use super::*;

#[test]
fn centre_crop_rounds_half_to_even_like_python() {
    assert_eq!(round_half_even(16.5), 16);
    assert_eq!(round_half_even(17.5), 18);
    assert_eq!(round_half_even(16.0), 16);
    assert_eq!(round_half_even(16.4), 16);
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/transform")
}

/// The largest and the mean difference of two images' subpixels.
fn differences(ours: &RgbImage, expected: &RgbImage) -> (i32, f64) {
    assert_eq!(ours.dimensions(), expected.dimensions());
    let differences: Vec<i32> = ours
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .collect();
    let max = *differences.iter().max().unwrap();
    (
        max,
        differences.iter().sum::<i32>() as f64 / differences.len() as f64,
    )
}

/// Against PIL (see `tests/fixtures/transform/README.md`). PIL resizes in 8-bit fixed point
/// and the image crate in floating point, so pixels may differ by rounding: at most 2 levels
/// anywhere and 0.5 on average, where a wrong filter, size or crop offset differs by tens.
#[test]
fn resize_and_crop_match_torchvision() {
    let ours = resize_and_crop(&fixtures().join("input.png"), 256, 224).unwrap();
    let expected = read_image(&fixtures().join("expected_crop.png")).unwrap();
    let (max, mean) = differences(&ours, &expected);
    assert!(max <= 2 && mean <= 0.5, "max difference {max}, mean {mean}");
}

/// The training crop and resize against PIL's crop and resize (torchvision's
/// `resized_crop`), with the same tolerance as above: fast_image_resize rounds its
/// fixed-point coefficients apart from Pillow's. A filter that saw pixels outside the crop
/// (as a crop box given to the resize does) differs by tens along the crop's edges.
#[test]
fn resized_crops_match_torchvision() {
    let input = read_image(&fixtures().join("input.png")).unwrap();
    let boxes = [(17, 40, 201, 150), (150, 100, 60, 45), (0, 5, 301, 240)];
    for (k, crop) in boxes.into_iter().enumerate() {
        let name = format!("expected_resized_crop_{k}.png");
        let expected = read_image(&fixtures().join(&name)).unwrap();
        let (max, mean) = differences(&resized_crop(&input, crop, (112, 112)), &expected);
        assert!(
            max <= 2 && mean <= 0.5,
            "{name}: max difference {max}, mean {mean}"
        );
    }
}

/// The JPEG route (zune-jpeg directly) gives the image crate's pixels, and an unreadable
/// file is an error that names it.
#[cfg(not(feature = "libjpeg-turbo"))]
#[test]
fn jpegs_decode_as_the_image_crate_decodes_them() {
    let input = read_image(&fixtures().join("input.png")).unwrap();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&input)
        .unwrap();
    let ours = decode(&jpeg, &"input.jpg").unwrap();
    let theirs = image::load_from_memory(&jpeg).unwrap().into_rgb8();
    assert_eq!(ours, theirs);
    let grey = image::DynamicImage::ImageRgb8(input).into_luma8();
    let mut grey_jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut grey_jpeg)
        .encode_image(&grey)
        .unwrap();
    let ours = decode(&grey_jpeg, &"grey.jpg").unwrap();
    let theirs = image::load_from_memory(&grey_jpeg).unwrap().into_rgb8();
    assert_eq!(ours, theirs, "grayscale, converted to RGB");
    // Cut inside its headers. (Cut inside its data, it decodes with the rest grey, as the
    // image crate decodes it.)
    let error = decode(&jpeg[..100], &"cut.jpg").unwrap_err();
    assert!(error.starts_with("cut.jpg: "), "{error}");
}

/// Crops stay inside the image with an area fraction in [0.08, 1] and an aspect ratio in
/// [3/4, 4/3] (up to the rounding of the sides to whole pixels), and vary.
#[test]
fn random_crops_follow_the_scale_and_ratio_ranges() {
    const SCALE: [f64; 2] = [0.08, 1.0];
    const RATIO: [f64; 2] = [0.75, 4.0 / 3.0];
    let mut rng = Rng::new(11);
    let (width, height) = (500u32, 375u32);
    let mut areas = Vec::new();
    for _ in 0..2000 {
        let (left, top, w, h) = random_crop_box(width, height, SCALE, RATIO, &mut rng);
        assert!(left + w <= width && top + h <= height);
        let fraction = (w * h) as f64 / (width * height) as f64;
        let ratio = w as f64 / h as f64;
        let slack = 1.0 / h.min(w) as f64 + 1e-9; // rounding of a side by half a pixel, twice
        assert!((0.08 - 0.01..=1.0).contains(&fraction), "{fraction}");
        assert!(
            ratio >= 0.75 * (1.0 - slack) && ratio <= 4.0 / 3.0 * (1.0 + slack),
            "{w}x{h}"
        );
        areas.push(fraction);
    }
    let mean = areas.iter().sum::<f64>() / areas.len() as f64;
    // Uniform area fractions in [0.08, 1] average 0.54; tries that do not fit the image
    // (large areas at extreme ratios) are redrawn, which lowers it a little.
    assert!((0.4..0.56).contains(&mean), "{mean}");
    // A very wide image falls back to the centre crop of ratio 4/3 when no try fits.
    assert_eq!(
        random_crop_box(1000, 10, SCALE, RATIO, &mut rng),
        (493, 0, 13, 10)
    );
    // A narrow range: area fractions in [0.5, 0.6], square crops.
    for _ in 0..200 {
        let (_, _, w, h) = random_crop_box(400, 300, [0.5, 0.6], [1.0, 1.0], &mut rng);
        let fraction = (w * h) as f64 / 120_000.0;
        assert!(
            w.abs_diff(h) <= 1 && (0.49..=0.61).contains(&fraction),
            "{w}x{h}"
        );
    }
}

/// Normalisation uses the ImageNet statistics, channel-major.
#[test]
fn normalise_standardises_channel_major() {
    let mut image = RgbImage::new(2, 1);
    image.put_pixel(0, 0, image::Rgb([255, 0, 0]));
    let values = normalise(&image);
    let red = (1.0 - MEAN[0]) / STD[0];
    let zero = -MEAN[0] / STD[0];
    assert_eq!((values[0], values[1]), (red, zero));
    assert_eq!(values[2], -MEAN[1] / STD[1]);
}

/// A plain resize and centre crop draws nothing and equals the evaluation transform; the
/// flip mirrors it; AutoAugment changes it (with a seed that applies an operation).
#[test]
fn augmentation_steps_follow_the_config() {
    let path = fixtures().join("input.png");
    let bytes = std::fs::read(&path).unwrap();
    let apply = |augmentation: &Augmentation, rng: &mut Rng| {
        let mut times = StageTimes::default();
        augmentation
            .apply(&bytes, &"input.png", 32, rng, &mut times)
            .unwrap()
    };
    let plain = Augmentation::new().with_crop(TrainCrop::ResizeCentre { resize: 40 });
    let still = plain.clone().with_flip(false);
    let eval = resize_and_crop(&path, 40, 32).unwrap();
    let mut rng = Rng::new(5);
    assert_eq!(apply(&still, &mut rng), eval);
    assert_eq!(rng.next_u64(), Rng::new(5).next_u64(), "nothing drawn");
    let mirrored = imageops::flip_horizontal(&eval);
    let (mut flips, mut changed) = (0, 0);
    for seed in 0..20 {
        let flipped = apply(&plain, &mut Rng::new(seed));
        flips += usize::from(flipped == mirrored);
        assert!(flipped == eval || flipped == mirrored);
        let augmented = apply(&still.clone().with_auto_augment(true), &mut Rng::new(seed));
        changed += usize::from(augmented != eval);
    }
    assert!((4..=16).contains(&flips), "{flips} flips of 20");
    assert!(changed >= 10, "AutoAugment changed {changed} of 20");
}

#[test]
fn bad_augmentations_are_named() {
    let error = |crop| {
        Augmentation::new()
            .with_crop(crop)
            .validate(32)
            .unwrap_err()
    };
    let scale = error(TrainCrop::RandomResized {
        scale: [0.5, 0.2],
        ratio: [0.75, 1.3],
    });
    assert!(scale.contains("data.augmentation.crop.scale"), "{scale}");
    let ratio = error(TrainCrop::RandomResized {
        scale: [0.1, 1.0],
        ratio: [0.0, 1.3],
    });
    assert!(ratio.contains("data.augmentation.crop.ratio"), "{ratio}");
    let resize = error(TrainCrop::ResizeCentre { resize: 16 });
    assert!(
        resize.contains("data.augmentation.crop.resize (16)"),
        "{resize}"
    );
}

/// The JPEG fixtures that PIL wrote, each with PIL's decode of it (see the fixtures' README).
const JPEG_FIXTURES: [&str; 5] = ["420", "422", "444", "progressive", "grey"];

fn jpeg_fixture(kind: &str) -> (Vec<u8>, RgbImage) {
    let bytes = std::fs::read(fixtures().join(format!("jpeg_{kind}.jpg"))).unwrap();
    let decoded = read_image(&fixtures().join(format!("jpeg_{kind}_decoded.png"))).unwrap();
    (bytes, decoded)
}

/// Against Pillow's decode: libjpeg-turbo's pixels are Pillow's (the same decoder, the same
/// default IDCT and chroma upsampling). zune-jpeg rounds its IDCT and chroma upsampling its
/// own way: its subpixels differ from Pillow's by up to 3 levels, 0.37 on average (4:2:0),
/// where a wrong colour conversion or a shifted block differs by tens. CMYK JPEGs (which libjpeg does not
/// convert to RGB) take zune-jpeg's route with either feature.
#[test]
fn jpegs_decode_as_pillow_decodes_them() {
    for kind in JPEG_FIXTURES {
        let (bytes, expected) = jpeg_fixture(kind);
        let ours = decode(&bytes, &kind).unwrap();
        let (max, mean) = differences(&ours, &expected);
        if cfg!(feature = "libjpeg-turbo") {
            assert_eq!((max, mean), (0, 0.0), "{kind}");
        } else {
            assert!(
                max <= 6 && mean <= 0.5,
                "{kind}: {max} at most, {mean} on average"
            );
        }
    }
    let bytes = std::fs::read(fixtures().join("jpeg_cmyk.jpg")).unwrap();
    assert_eq!(decode(&bytes, &"cmyk").unwrap().dimensions(), (141, 93));
    let error = decode(&bytes[..100], &"cut.jpg").unwrap_err();
    assert!(error.starts_with("cut.jpg: "), "{error}");
    let mut garbled = bytes.clone();
    garbled[2..200].fill(0x5A);
    let error = decode(&garbled, &"garbled.jpg").unwrap_err();
    assert!(error.starts_with("garbled.jpg: "), "{error}");
}

/// A region decoded alone (libjpeg-turbo: its rows, and the columns of the blocks around it)
/// holds exactly the pixels of the whole image's decode there, at every kind of JPEG, for
/// regions at the edges, of one pixel, and of the whole image.
#[test]
fn regions_decode_as_the_whole_image_does() {
    let mut rng = Rng::new(11);
    for kind in JPEG_FIXTURES {
        let (bytes, _) = jpeg_fixture(kind);
        let whole = decode(&bytes, &kind).unwrap();
        let (width, height) = whole.dimensions();
        let mut regions = vec![
            (0, 0, width, height),
            (width - 1, height - 1, 1, 1),
            (0, 50, width, 43),
        ];
        for _ in 0..40 {
            let (w, h) = (
                1 + rng.below(width as usize) as u32,
                1 + rng.below(height as usize) as u32,
            );
            let left = rng.below((width - w + 1) as usize) as u32;
            let top = rng.below((height - h + 1) as usize) as u32;
            regions.push((left, top, w, h));
        }
        for region in regions {
            let (left, top, w, h) = region;
            let (image, at) = Opened::read(&bytes, &kind)
                .unwrap()
                .region(region, &kind)
                .unwrap();
            let ours = imageops::crop_imm(&image, at.0, at.1, at.2, at.3).to_image();
            let expected = imageops::crop_imm(&whole, left, top, w, h).to_image();
            assert!(ours == expected, "{kind}: region {region:?}");
        }
    }
}

/// The training crop of a JPEG decodes only its region and gives the crop of the whole
/// decode: the same draws, the same pixels.
#[test]
fn training_crops_of_jpegs_equal_crops_of_the_whole_decode() {
    let augmentation = Augmentation::new().with_flip(false);
    for kind in JPEG_FIXTURES {
        let (bytes, _) = jpeg_fixture(kind);
        let whole = decode(&bytes, &kind).unwrap();
        for seed in 0..10 {
            let mut rng = Rng::new(seed);
            let mut times = StageTimes::default();
            let ours = augmentation
                .apply(&bytes, &kind, 64, &mut rng, &mut times)
                .unwrap();
            let mut expected_rng = Rng::new(seed);
            let crop = random_crop_box(
                whole.width(),
                whole.height(),
                [0.08, 1.0],
                [0.75, 4.0 / 3.0],
                &mut expected_rng,
            );
            assert_eq!(
                ours,
                resized_crop(&whole, crop, (64, 64)),
                "{kind}, seed {seed}"
            );
            assert_eq!(rng.next_u64(), expected_rng.next_u64());
        }
    }
}
