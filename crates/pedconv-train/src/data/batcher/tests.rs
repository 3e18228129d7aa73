//! Batches: 8-bit on the host, normalised and mixed on the device; unreadable images.

use super::*;
use crate::data::Split;
use burn::backend::Flex;

/// Image `i` is the constant level `50 i` (2×2), of class `i`; image 2 cannot be read.
struct Constant;

impl ImageSource for Constant {
    fn len(&self) -> usize {
        5
    }
    fn label(&self, index: usize) -> usize {
        index
    }
    fn pixels(&self, index: usize, _: &mut Rng, _: &mut StageTimes) -> Result<Pixels, String> {
        if index == 2 {
            return Err("image 2: corrupt".into());
        }
        let level = 50 * index as u8;
        Ok(Pixels::Rgb8(RgbImage::from_pixel(
            2,
            2,
            image::Rgb([level; 3]),
        )))
    }
}

fn constant_batcher(mixup: f64, max_fraction: f64) -> (ImageBatcher, Arc<Mutex<usize>>) {
    let split = Split {
        source: Arc::new(Constant),
        side: 2,
        name: "constants".into(),
    };
    let stops = Arc::new(Mutex::new(0));
    let counter = stops.clone();
    let bad = BadImages::new(&split, max_fraction, move || *counter.lock().unwrap() += 1);
    let batcher = ImageBatcher::new(&split, 5, mixup, 2, Arc::new(bad)).unwrap();
    (batcher, stops)
}

fn samples(indices: &[usize], seed: u64) -> Vec<Sample> {
    indices
        .iter()
        .map(|&index| Sample { index, seed })
        .collect()
}

/// The images of a batch on the device, and its targets.
fn on_device(batch: Batch) -> (Vec<f32>, Vec<f32>) {
    on::<Flex>(batch)
}

fn on<B: Backend>(batch: Batch) -> (Vec<f32>, Vec<f32>) {
    let batch = batch.into_device::<B>(&Default::default());
    (
        batch.images.into_data().to_vec().unwrap(),
        batch.targets.into_data().to_vec().unwrap(),
    )
}

/// Without mixup, the batch travels as `u8`, channel-major, and the device's normalisation
/// equals the host's (the same float32 operations); targets are one-hot.
#[test]
fn batches_travel_as_bytes_and_are_normalised_on_the_device() {
    let (batcher, _) = constant_batcher(0.0, 1.0);
    let batch = batcher.assemble(&samples(&[1, 4], 0), 1);
    assert_eq!(batch.images.dtype, DType::U8);
    assert_eq!(batch.images.shape.as_slice(), [2, 3, 2, 2]);
    assert!(batch.mixup.is_none());
    let (images, targets) = on_device(batch);
    let host: Vec<f32> = [1u8, 4]
        .iter()
        .flat_map(|&i| normalise(&RgbImage::from_pixel(2, 2, image::Rgb([50 * i; 3]))))
        .collect();
    assert_eq!(images, host);
    assert_eq!(targets, [0., 1., 0., 0., 0., 0., 0., 0., 0., 1.]);
    assert!(batcher.stage_times().assemble > std::time::Duration::ZERO);
}

/// On wgpu (burn's fusion over CubeCL; lavapipe in CI), where the bytes go up as `u8`
/// when the device holds 8-bit integers: the host's values to float32 rounding (a GPU may
/// divide through a reciprocal), mixup included.
#[cfg(feature = "wgpu")]
#[test]
fn batches_are_normalised_and_mixed_on_the_gpu() {
    let (batcher, _) = constant_batcher(0.2, 1.0);
    for seed in 0..3 {
        let batch = batcher.assemble(&samples(&[0, 1, 3, 4], seed), 1);
        let (host, _) = on::<Flex>(batch.clone());
        let (device, _) = on::<burn::backend::Wgpu>(batch);
        for (a, b) in host.iter().zip(&device) {
            assert!((a - b).abs() <= 1e-6, "{a} on the host, {b} on wgpu");
        }
    }
}

/// Mixed images are `λ x_i + (1 - λ) x_π(i)` and mixed targets put `λ` and `1 - λ` on the two
/// images' classes: as image `c` is the constant level `50 c` of class `c` and the
/// normalisation is affine, every value of channel `k` must equal
/// `Σ_c target_c · (50 c / 255 - mean_k) / std_k`. The label is the class of larger weight.
#[test]
fn mixup_blends_images_and_targets_alike() {
    let (batcher, _) = constant_batcher(0.2, 1.0);
    let indices = [0, 1, 3, 4];
    let mut mixed = 0;
    for seed in 0..5 {
        let batch = batcher.assemble(&samples(&indices, seed), 1);
        let labels = batch.labels.clone();
        let (images, targets) = on_device(batch);
        for (i, &index) in indices.iter().enumerate() {
            let row = &targets[i * 5..(i + 1) * 5];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row[index] >= 0.0 && row.iter().filter(|&&w| w > 0.0).count() <= 2);
            for k in 0..3 {
                let expected: f32 = row
                    .iter()
                    .enumerate()
                    .map(|(c, w)| w * ((50 * c) as f32 / 255.0 - MEAN[k]) / STD[k])
                    .sum();
                let values = &images[i * 12 + k * 4..i * 12 + (k + 1) * 4];
                assert!(
                    values.iter().all(|v| (v - expected).abs() < 1e-5),
                    "{values:?} {row:?}"
                );
            }
            let label = labels[i] as usize;
            assert!(row.iter().all(|&w| row[label] >= w));
            mixed += usize::from(row[index] < 1.0 - 1e-6);
        }
    }
    assert!(mixed > 0);
}

/// An unreadable image is replaced by the next readable one and counted once; `stop` is
/// called when the allowed count is exceeded (`floor(0.2 · 5) = 1` allowed, then none).
#[test]
fn unreadable_images_are_replaced_counted_and_stop_the_run() {
    let (lenient, stops) = constant_batcher(0.0, 0.2);
    let batch = lenient.assemble(&samples(&[2, 2, 0], 0), 1);
    let images = batch.images.to_vec::<u8>().unwrap();
    assert_eq!((images[0], images[12]), (150, 150)); // image 3 replaced image 2
    assert_eq!(batch.labels, vec![3, 3, 0]);
    assert_eq!(lenient.bad.count(), 1);
    assert!(lenient.bad.too_many().is_none());
    assert_eq!(*stops.lock().unwrap(), 0);

    let (strict, stops) = constant_batcher(0.0, 0.1);
    strict.assemble(&samples(&[2], 0), 1);
    assert_eq!(*stops.lock().unwrap(), 1);
    let message = strict.bad.too_many().unwrap();
    assert!(message.contains("constants") && message.contains("image 2: corrupt"));
}
