//! Parameter and multiply-accumulate tables of every ResNet, static and with PEDConv, computed
//! from the configurations alone (nothing is built).
//!
//! ```text
//! cargo run --release -p pedconv --example resnet_tables -- [--size 224] [--classes 1000] [--width 1.0]
//! ```

mod cli;

use pedconv::resnet::{ResNetConfig, ResNetDepth, ResNetVariant};

const PROGRAM: &str = "resnet_tables";

fn millions(n: usize) -> String {
    format!("{:.3}", n as f64 / 1e6)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut size, mut classes, mut width) = (224usize, 1000usize, 1.0f64);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--size" => size = cli::parse(PROGRAM, &flag, &value),
            "--classes" => classes = cli::parse(PROGRAM, &flag, &value),
            "--width" => width = cli::parse(PROGRAM, &flag, &value),
            _ => fail(&format!(
                "unknown argument `{flag}` (expected --size N, --classes N, --width W)"
            )),
        }
    }

    if size == 0 || classes == 0 {
        fail("--size and --classes must be positive");
    }
    println!("{size}×{size} input, {classes} classes, width {width}; parameters in millions, multiply-accumulates in billions");
    println!();
    println!("| model | params (inference) | base | attention | decoder (training only) | GMACs | of which attention + modulation |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let architectures = [
        ("ResNet-18", ResNetDepth::R18, ResNetVariant::Classic),
        ("ResNet-34", ResNetDepth::R34, ResNetVariant::Classic),
        ("ResNet-50", ResNetDepth::R50, ResNetVariant::Classic),
        ("ResNet-50d", ResNetDepth::R50, ResNetVariant::D),
        ("ResNet-101", ResNetDepth::R101, ResNetVariant::Classic),
        ("ResNet-152", ResNetDepth::R152, ResNetVariant::Classic),
    ];
    for (name, depth, variant) in architectures {
        let static_config = ResNetConfig::new(depth)
            .with_variant(variant)
            .with_num_classes(classes)
            .with_width(width);
        if let Err(error) = static_config.validate() {
            fail(&error.to_string());
        }
        for (label, config) in [
            (name.to_string(), static_config.clone()),
            (format!("PEDConv-{name}"), static_config.clone().dynamic()),
        ] {
            let params = config.parameter_counts();
            let macs = config.macs([size, size]);
            println!(
                "| {label} | {} | {} | {} | {} | {:.3} | {:.4} |",
                millions(params.inference()),
                millions(params.base),
                millions(params.attention),
                millions(params.decoder),
                macs.inference() as f64 / 1e9,
                (macs.attention + macs.modulation) as f64 / 1e9,
            );
        }
    }
}

fn fail(message: &str) -> ! {
    cli::fail(PROGRAM, message)
}
