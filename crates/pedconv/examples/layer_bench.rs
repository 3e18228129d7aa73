//! Per-layer benchmark on the CPU (flex) backend: forward and forward+backward time and peak
//! heap memory of a static `Conv2d` and of each PEDConv compute path, at ResNet-18 layer shapes.
//!
//! ```text
//! cargo run --release -p pedconv --example layer_bench -- [--batch 32] [--reps 5] [--json FILE]
//! ```
//!
//! Times are medians over `--reps` runs after one warm-up run. Peak memory is the largest heap
//! allocation above what was allocated before the measured call (inputs and parameters), counted
//! by a global allocator wrapper, over the warm-up run.

mod cli;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use pedconv::{ComputePath, PedConv2d, PedConv2dConfig};

/// The system allocator, keeping the current and the peak number of bytes allocated.
struct CountingAllocator;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const PROGRAM: &str = "layer_bench";

type Inference = Flex;
type Training = Autodiff<Flex>;

/// Time (median, ms) and peak extra heap (MiB) of one operation.
#[derive(Debug, Clone, Copy)]
struct Measure {
    millis: f64,
    peak_mib: f64,
}

fn measure(reps: usize, mut run: impl FnMut()) -> Measure {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    run(); // warm-up, and the memory measurement
    let peak_mib = (PEAK.load(Ordering::Relaxed) - before) as f64 / (1024.0 * 1024.0);
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Measure {
        millis: times[times.len() / 2],
        peak_mib,
    }
}

fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device synchronisation");
}

/// The operator under test: burn's `Conv2d` or one PEDConv path.
#[derive(Clone, Copy, Debug)]
enum Operator {
    Static,
    Ped(ComputePath),
}

impl Operator {
    fn name(self) -> String {
        match self {
            Operator::Static => "static Conv2d".to_string(),
            Operator::Ped(path) => format!("PEDConv {path:?}"),
        }
    }
}

struct Row {
    shape: String,
    operator: Operator,
    forward: Measure,
    forward_backward: Measure,
}

fn bench_shape(batch: usize, channels: usize, size: usize, reps: usize) -> Vec<Row> {
    let device = Default::default();
    let padding = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let conv: Conv2d<Training> = Conv2dConfig::new([channels, channels], [3, 3])
        .with_padding(padding.clone())
        .with_bias(false)
        .init(&device);
    let ped: PedConv2d<Training> = PedConv2dConfig::new([channels, channels], [3, 3])
        .with_padding(padding)
        .init(&device);
    let x = Tensor::<Training, 4>::random(
        [batch, channels, size, size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let x_inner = x.clone().inner();
    let shape = format!("{batch}×{channels}×{size}×{size}, 3×3");
    let (conv_inner, ped_inner) = (conv.valid(), ped.valid());

    let mut rows = Vec::new();
    for operator in [
        Operator::Static,
        Operator::Ped(ComputePath::Factorized),
        Operator::Ped(ComputePath::PerSampleKernel),
    ] {
        eprintln!("{shape}: {} …", operator.name());
        let (forward, forward_backward) = match operator {
            Operator::Static => (
                measure(reps, || {
                    let _ = conv_inner.forward(x_inner.clone());
                    sync::<Inference>(&device);
                }),
                measure(reps, || {
                    let x = x.clone().require_grad();
                    let _ = conv.forward(x).sum().backward();
                    sync::<Training>(&device);
                }),
            ),
            Operator::Ped(path) => {
                let inner = ped_inner.clone().with_compute_path(path);
                let train = ped.clone().with_compute_path(path);
                (
                    measure(reps, || {
                        let _ = inner.forward(x_inner.clone());
                        sync::<Inference>(&device);
                    }),
                    measure(reps, || {
                        let x = x.clone().require_grad();
                        let out = train.forward_train(x);
                        let loss = out.output.sum()
                            + out.info_max_loss.expect("decoder on").mul_scalar(0.001);
                        let _ = loss.backward();
                        sync::<Training>(&device);
                    }),
                )
            }
        };
        rows.push(Row {
            shape: shape.clone(),
            operator,
            forward,
            forward_backward,
        });
    }
    rows
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut batch, mut reps, mut json) = (32, 5, None);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--batch" => batch = cli::parse(PROGRAM, &flag, &value()),
            "--reps" => reps = cli::parse::<usize>(PROGRAM, &flag, &value()).max(1),
            "--json" => json = Some(value()),
            _ => fail(&format!(
                "unknown argument `{flag}` (expected --batch N, --reps N, --json FILE)"
            )),
        }
    }

    let rows: Vec<Row> = [(64, 56), (512, 7)]
        .into_iter()
        .flat_map(|(channels, size)| bench_shape(batch, channels, size, reps))
        .collect();

    println!(
        "flex backend, {reps} repetitions (median), {} threads available",
        num_threads()
    );
    println!();
    println!("| layer | operator | forward ms | ×static | fwd+bwd ms | ×static | peak fwd MiB | peak fwd+bwd MiB |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        let baseline = rows
            .iter()
            .find(|r| r.shape == row.shape && matches!(r.operator, Operator::Static))
            .expect("static row");
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.1} | {:.1} |",
            row.shape,
            row.operator.name(),
            row.forward.millis,
            row.forward.millis / baseline.forward.millis,
            row.forward_backward.millis,
            row.forward_backward.millis / baseline.forward_backward.millis,
            row.forward.peak_mib,
            row.forward_backward.peak_mib,
        );
    }
    if let Some(path) = json {
        let entries: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"layer\":\"{}\",\"operator\":\"{}\",\"forward_ms\":{:.3},\"forward_backward_ms\":{:.3},\"forward_peak_mib\":{:.2},\"forward_backward_peak_mib\":{:.2}}}",
                    r.shape,
                    r.operator.name(),
                    r.forward.millis,
                    r.forward_backward.millis,
                    r.forward.peak_mib,
                    r.forward_backward.peak_mib
                )
            })
            .collect();
        let text = format!(
            "{{\"backend\":\"flex\",\"batch\":{batch},\"reps\":{reps},\"rows\":[{}]}}\n",
            entries.join(",")
        );
        std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("cannot write {path}: {e}")));
        eprintln!("wrote {path}");
    }
}

fn num_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn fail(message: &str) -> ! {
    cli::fail(PROGRAM, message)
}
