//! Unit tests of the experiment configuration's validation and defaults.

use super::*;
use crate::data::transform::TrainCrop;

fn error_of(edit: impl FnOnce(&mut TrainConfig)) -> String {
    let mut config = TrainConfig::builtin();
    edit(&mut config);
    config.validate().unwrap_err()
}

#[test]
fn the_builtin_config_is_valid_and_round_trips_through_json() {
    let config = TrainConfig::builtin();
    config.validate().unwrap();
    let json = config.to_string();
    let back = TrainConfig::load_binary(json.as_bytes()).unwrap();
    assert_eq!(back.to_string(), json);
    assert_eq!(back.data.source, config.data.source);
    assert!(json.contains(r#""kind": "builtin""#), "{json}");
}

#[test]
fn recipes_parse_with_tagged_sources_and_decays() {
    let mut config = TrainConfig::builtin();
    config.data.source = DataSource::Folder {
        path: "/data/imagenet".into(),
    };
    config.decay = LrDecay::Step {
        milestones: vec![30, 60, 80],
        gamma: 0.1,
    };
    config.optimizer_batch_size = Some(256);
    let back = TrainConfig::load_binary(config.to_string().as_bytes()).unwrap();
    assert_eq!(back.decay, config.decay);
    assert_eq!(back.data.source, config.data.source);
    assert_eq!(back.accumulation(), 4);
    assert!((back.peak_lr() - 0.256).abs() < 1e-12);
}

/// Every file in `configs/` parses and is valid (a file without `model`, which takes the
/// network of the weights it starts from, with a ResNet-18 standing in for them);
/// `builtin.json` is the built-in default; the ImageNet recipes hold the reference's command
/// (see `configs/README.md`); `fine-tune.json` trains its head alone for an epoch.
#[test]
fn the_shipped_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut recipes = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let weights_network = ResNetConfig::new(ResNetDepth::R18).dynamic();
        let config = TrainConfig::read(&path, Some(&weights_network))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "builtin.json" {
            assert_eq!(config.to_string(), TrainConfig::builtin().to_string());
        }
        if name == "fine-tune.json" {
            let fine_tune = config.fine_tune.as_ref().expect("fine-tuning settings");
            assert_eq!(config.model.to_string(), weights_network.to_string());
            assert_eq!(fine_tune.train_only, Some(TrainOnly::Head));
            assert_eq!(fine_tune.train_only_epochs, Some(1));
            assert_eq!(fine_tune.started_from, None);
        }
        if name.ends_with("-imagenet.json") {
            recipes += 1;
            assert_eq!(config.epochs, 250, "{name}");
            assert_eq!(config.warmup_epochs, 8, "{name}");
            assert_eq!(config.decay, LrDecay::Cosine, "{name}");
            assert_eq!((config.momentum, config.mixup), (0.875, 0.2), "{name}");
            // 8 GPUs × 64 images = 512 per step at lr 0.512, without accumulation
            // (`--devices 0` trains the same steps on one device in 8 passes of 64).
            assert_eq!((config.devices, config.batch_size), (8, 64), "{name}");
            assert_eq!(config.accumulation(), 1, "{name}");
            assert_eq!(config.optimizer_batch(), 512, "{name}");
            assert_eq!(config.peak_lr(), 0.512, "{name}");
            assert_eq!(config.weight_decay, 3.0517578125e-05, "{name}");
            assert_eq!(config.label_smoothing, 0.1, "{name}");
            assert_eq!(config.model.num_classes, 1000, "{name}");
            assert!(!config.classes_from_data, "{name}");
            assert_eq!(
                config.model.pedconv.is_some(),
                name.starts_with("pedconv-"),
                "{name}"
            );
            let data = &config.data;
            assert_eq!(
                (data.train_crop, data.val_resize, data.val_crop),
                (224, 256, 224)
            );
            let augmentation = &data.augmentation;
            assert_eq!(augmentation.crop, TrainCrop::random_resized(), "{name}");
            assert!(augmentation.flip && augmentation.auto_augment, "{name}");
        }
    }
    assert_eq!(recipes, 4);
}

#[test]
fn invalid_values_are_named() {
    assert!(error_of(|c| c.epochs = 0).contains("epochs"));
    assert!(error_of(|c| c.optimizer_batch_size = Some(100)).contains("optimizer_batch_size"));
    let two_devices = |c: &mut TrainConfig| {
        c.devices = 2;
        c.optimizer_batch_size = Some(3 * c.batch_size);
    };
    assert!(error_of(two_devices).contains("devices (2) × batch_size"));
    assert!(error_of(|c| c.devices = 0).contains("devices must be positive"));
    assert!(error_of(|c| c.label_smoothing = 1.0).contains("label_smoothing"));
    assert!(error_of(|c| c.mixup = -0.1).contains("mixup"));
    assert!(error_of(|c| c.warmup_epochs = 9).contains("warmup_epochs"));
    assert!(error_of(|c| c.data.val_resize = 8).contains("data.val_resize"));
    assert!(error_of(|c| c.data.max_bad_fraction = 2.0).contains("data.max_bad_fraction"));
    let step = |c: &mut TrainConfig| {
        c.decay = LrDecay::Step {
            milestones: vec![5, 3],
            gamma: 0.1,
        }
    };
    assert!(error_of(step).contains("decay.milestones"));
    let mut config = TrainConfig::builtin();
    config.model.num_classes = 10;
    let classes = config.check_data(12, 1000).unwrap_err();
    assert!(
        classes.contains("model.num_classes is 10, the data has 12")
            && classes.contains("--num-classes 12"),
        "{classes}"
    );
    let config = TrainConfig::builtin().with_batch_size(1_000_000_000);
    let batch = config.check_data(12, 3072).unwrap_err();
    assert!(
        batch.contains("1000000000 images") && batch.contains("3072 training images"),
        "{batch}"
    );
    assert!(TrainConfig::builtin().check_data(12, 3072).is_ok());
}
