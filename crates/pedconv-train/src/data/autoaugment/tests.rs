//! AutoAugment's operations against PIL's, on the fixtures of `tests/fixtures/autoaugment`.

use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> RgbImage {
    let dir: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/autoaugment");
    image::open(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8()
}

/// The fixtures of each operation (`make_fixtures.py` writes the same magnitude indices, the
/// signed operations with both signs) and the fraction of pixels allowed to differ from
/// PIL's: none, but for the rotation. PIL walks its source coordinates in 16.16 fixed point
/// (off by up to about 9e-4 on this image), imageproc in single precision; a pixel whose
/// source point lies that close to a pixel boundary (a tie but for rounding) may take the
/// neighbouring source pixel: at most about 0.35 % of the pixels, 1 of 3072 in 3 of the 4
/// fixtures (see the fixtures' README).
const FIXTURES: [(Operation, &[usize], f64); 15] = [
    (ShearX, &[4, 9], 0.0),
    (ShearY, &[3, 7], 0.0),
    (TranslateX, &[1, 2], 0.0),
    (TranslateY, &[1, 9], 0.0),
    (Rotate, &[2, 8], 0.005),
    (Color, &[0, 4, 9], 0.0),
    (Posterize, &[2, 6, 10], 0.0),
    (Solarize, &[2, 8, 10], 0.0),
    (SolarizeAdd, &[3, 7], 0.0),
    (Contrast, &[1, 5, 9], 0.0),
    (Sharpness, &[1, 9], 0.0),
    (Brightness, &[2, 9], 0.0),
    (AutoContrast, &[0, 9], 0.0),
    (Equalize, &[0, 9], 0.0),
    (Invert, &[0, 9], 0.0),
];

/// Every operation against PIL's result at each fixture's magnitude and sign; all
/// differences are reported before failing.
#[test]
fn operations_match_pil() {
    let input = fixture("input.png");
    let mut failures = Vec::new();
    for (op, indices, allowed) in FIXTURES {
        let signs: &[f64] = if op.is_signed() { &[1.0, -1.0] } else { &[1.0] };
        for (&index, &sign) in indices
            .iter()
            .flat_map(|i| signs.iter().map(move |s| (i, s)))
        {
            let name = format!(
                "{}_{index}_{}.png",
                op.name(),
                if sign > 0.0 { "pos" } else { "neg" }
            );
            let ours = apply(op, index, &input, sign);
            let pil = fixture(&name);
            let differing = ours
                .pixels()
                .zip(pil.pixels())
                .filter(|(a, b)| a != b)
                .count();
            let fraction = differing as f64 / f64::from(input.width() * input.height());
            if fraction > allowed {
                failures.push(format!("{name}: {differing} pixels differ ({fraction:.4})"));
            }
        }
    }
    assert_eq!(
        FIXTURES.map(|(op, _, _)| op),
        Operation::ALL,
        "every operation has fixtures"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The ranges as NumPy computes them (`repr` of `np.linspace(...)`'s values).
#[test]
fn magnitudes_are_numpys() {
    let factors = [
        0.1,
        0.28,
        0.45999999999999996,
        0.64,
        0.82,
        0.9999999999999999,
        1.1800000000000002,
        1.36,
        1.54,
        1.72,
        1.9,
    ];
    let thresholds = [
        0.0,
        25.6,
        51.2,
        76.80000000000001,
        102.4,
        128.0,
        153.60000000000002,
        179.20000000000002,
        204.8,
        230.4,
        256.0,
    ];
    let bits = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0];
    for i in 0..=10 {
        assert_eq!(Color.magnitude(i), factors[i]);
        assert_eq!(Sharpness.magnitude(i), factors[i]);
        assert_eq!(Solarize.magnitude(i), thresholds[i]);
        assert_eq!(Posterize.magnitude(i), bits[i]);
        assert_eq!(Rotate.magnitude(i), 3.0 * i as f64);
        assert_eq!(TranslateY.magnitude(i), 25.0 * i as f64);
        assert_eq!(SolarizeAdd.magnitude(i), 11.0 * i as f64);
    }
    assert_eq!(ShearX.magnitude(9), 0.27);
    assert_eq!(Equalize.magnitude(3), 0.0);
}

/// The table against the reference's list, spelled out independently.
#[test]
fn policy_is_the_reference() {
    let reference = "
        (0.8 equalize 1, 0.8 shearY 4) (0.4 color 9, 0.6 equalize 3) (0.4 color 1, 0.6 rotate 8)
        (0.8 solarize 3, 0.4 equalize 7) (0.4 solarize 2, 0.6 solarize 2) (0.2 color 0, 0.8 equalize 8)
        (0.4 equalize 8, 0.8 solarizeadd 3) (0.2 shearX 9, 0.6 rotate 8) (0.6 color 1, 1.0 equalize 2)
        (0.4 invert 9, 0.6 rotate 0) (1.0 equalize 9, 0.6 shearY 3) (0.4 color 7, 0.6 equalize 0)
        (0.4 posterize 6, 0.4 autocontrast 7) (0.6 solarize 8, 0.6 color 9) (0.2 solarize 4, 0.8 rotate 9)
        (1.0 rotate 7, 0.8 translateY 9) (0.0 shearX 0, 0.8 solarize 4) (0.8 shearY 0, 0.6 color 4)
        (1.0 color 0, 0.6 rotate 2) (0.8 equalize 4, 0.0 equalize 8) (1.0 equalize 4, 0.6 autocontrast 2)
        (0.4 shearY 7, 0.6 solarizeadd 7) (0.8 posterize 2, 0.6 solarize 10) (0.6 solarize 8, 0.6 equalize 1)
        (0.8 color 6, 0.4 rotate 5)";
    let ours: Vec<String> = IMAGENET_POLICY
        .iter()
        .flat_map(|s| [s.first, s.second])
        .map(|(p, op, m)| format!("{p:.1} {} {m}", op.name()))
        .collect();
    let theirs: Vec<&str> = reference
        .split(['(', ')', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(ours, theirs);
}

/// The draw order (sub-policy, then per operation the probability and, if applied and
/// signed, the sign), reproducibility, and that applying a draw is `auto_augment`.
#[test]
fn augmentation_is_a_function_of_the_seed() {
    let input = fixture("input.png");
    let mut changed = 0;
    for seed in 0..40 {
        let mut rng = Rng::new(seed);
        let draw = Draw::new(&mut rng.clone());
        assert_eq!(draw.sub_policy, Rng::new(seed).below(25));
        let policy = IMAGENET_POLICY[draw.sub_policy];
        let signed = [policy.first.1, policy.second.1]
            .iter()
            .zip(draw.applied)
            .filter(|(op, sign)| op.is_signed() && sign.is_some())
            .count();
        let mut after = Rng::new(seed);
        for _ in 0..3 + signed {
            after.next_u64();
        }
        let augmented = auto_augment(input.clone(), &mut rng);
        assert_eq!(rng.next_u64(), after.next_u64(), "seed {seed}: draws");
        assert_eq!(augmented, auto_augment(input.clone(), &mut Rng::new(seed)));
        assert_eq!(augmented, draw.apply(input.clone()));
        changed += usize::from(augmented != input);
    }
    assert!(changed > 20, "{changed} of 40 images changed");
}

/// Over 50 000 draws: sub-policies uniform, each operation applied with its probability, the
/// signed ones with either sign equally often (bounds about 4 standard errors).
#[test]
fn draws_follow_the_policy_probabilities() {
    let n = 50_000;
    let mut rng = Rng::new(11);
    let mut drawn = [0usize; 25];
    let mut applied = [[0usize; 2]; 25];
    let (mut signed, mut negative) = (0usize, 0usize);
    for _ in 0..n {
        let draw = Draw::new(&mut rng);
        let policy = IMAGENET_POLICY[draw.sub_policy];
        drawn[draw.sub_policy] += 1;
        for (k, (op, sign)) in [policy.first.1, policy.second.1]
            .into_iter()
            .zip(draw.applied)
            .enumerate()
        {
            let Some(sign) = sign else { continue };
            applied[draw.sub_policy][k] += 1;
            if op.is_signed() {
                signed += 1;
                negative += usize::from(sign < 0.0);
            } else {
                assert_eq!(sign, 1.0);
            }
        }
    }
    for (s, policy) in IMAGENET_POLICY.iter().enumerate() {
        assert!(
            drawn[s].abs_diff(n / 25) < 180,
            "sub-policy {s}: {}",
            drawn[s]
        );
        for (k, p) in [policy.first.0, policy.second.0].into_iter().enumerate() {
            let rate = applied[s][k] as f64 / drawn[s] as f64;
            assert!(
                (rate - p).abs() < 0.05,
                "sub-policy {s} op {k}: {rate} vs {p}"
            );
            if p == 0.0 || p == 1.0 {
                assert_eq!(rate, p);
            }
        }
    }
    assert!((negative as f64 / signed as f64 - 0.5).abs() < 0.02);
}
