//! Timing and peak memory of a piece of work.
//!
//! The `pedconv` binary counts its heap through [`CountingAllocator`] (two relaxed atomic
//! updates per allocation), so the benchmark can report the peak memory of a step: the largest
//! number of heap bytes allocated during it beyond what was allocated before it. On the CPU
//! backends that is where tensors live. On the CubeCL backends (wgpu, CUDA) tensors live in
//! CubeCL's memory pools, which count the bytes in use but keep no peak: [`DevicePeak`] reads
//! that count every millisecond from a second thread, on the measuring thread's CubeCL stream,
//! while the step runs, and keeps the largest.

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;

use burn::tensor::backend::Backend;

/// The system allocator, keeping the current and the peak number of bytes allocated.
pub struct CountingAllocator;

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

/// Median time, first run's time and peak extra memory of a piece of work.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measure {
    /// Median over the timed repetitions, in milliseconds.
    pub millis: f64,
    /// The first run, in milliseconds: on the CubeCL backends its kernels' compilation and
    /// autotuning included (none where the caches already hold them).
    pub first_millis: f64,
    /// Peak heap during a run after the warm-ups, above the heap before it, in MiB.
    pub peak_mib: f64,
    /// On the CubeCL backends: the peak of the device memory in use during a run after the
    /// warm-ups, above the memory in use before it, sampled every millisecond, in MiB.
    pub device_peak_mib: Option<f64>,
}

impl Measure {
    /// The peak that says most on this backend: the device's where it has one, else the heap's.
    pub fn peak(&self) -> f64 {
        self.device_peak_mib.unwrap_or(self.peak_mib)
    }
}

/// The device memory in use, sampled from a second thread while some work runs on the CubeCL
/// backend of a device.
struct DevicePeak {
    /// Bytes in use now.
    in_use: Box<dyn Fn() -> Option<u64> + Send + Sync>,
}

impl DevicePeak {
    /// For `device`, when it is a CubeCL backend's device. The samples are read on the calling
    /// thread's CubeCL stream, whose memory pools hold the work's tensors.
    fn of<D: Any>(device: &D) -> Option<Self> {
        let device = device as &dyn Any;
        #[cfg(feature = "wgpu")]
        if let Some(device) = device.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
            return Some(Self::on::<burn::backend::wgpu::WgpuRuntime>(device));
        }
        #[cfg(feature = "cuda")]
        if let Some(device) = device.downcast_ref::<burn::backend::cuda::CudaDevice>() {
            return Some(Self::on::<burn_cubecl::cubecl::cuda::CudaRuntime>(device));
        }
        let _ = device;
        None
    }

    #[allow(dead_code)] // unused without the CubeCL backends' features
    fn on<R: burn_cubecl::cubecl::Runtime>(device: &R::Device) -> Self {
        let client = R::client(device);
        let stream = burn_cubecl::cubecl::stream_id::StreamId::current();
        Self {
            in_use: Box::new(move || {
                let usage = stream.executes(|| client.memory_usage()).ok()?;
                Some(usage.bytes_in_use)
            }),
        }
    }

    /// Runs `work` and answers the largest number of bytes in use seen while it ran, above the
    /// bytes in use before it. A panic of `work` stops the sampling thread and goes on
    /// unwinding once that thread has ended, never waiting for it for ever.
    fn during(&self, work: impl FnOnce()) -> Option<u64> {
        let before = (self.in_use)()?;
        let peak = AtomicU64::new(before);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if let Some(now) = (self.in_use)() {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            let _stop_sampling = SetOnDrop(&done);
            work();
        });
        let peak = peak.load(Ordering::Relaxed).max((self.in_use)()?);
        Some(peak - before)
    }
}

/// Sets its flag when dropped: when the work returns, and when it panics too.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `work` twice to warm up, the first run timed on its own (compilation and autotuning
/// land there); once more for its peak memory (apart from the timed runs, which the sampling
/// would slow); then `reps` times on the clock. `work` runs on `device` of `B` and must
/// synchronise it before it returns.
pub fn measure<B: Backend>(reps: usize, device: &B::Device, mut work: impl FnMut()) -> Measure {
    let mut timed = || {
        let start = Instant::now();
        work();
        start.elapsed().as_secs_f64() * 1e3
    };
    let first_millis = timed();
    timed();
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let device_peak = match DevicePeak::of(device) {
        Some(sampler) => sampler.during(|| {
            timed();
        }),
        None => {
            timed();
            None
        }
    };
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let mut times: Vec<f64> = (0..reps.max(1)).map(|_| timed()).collect();
    times.sort_by(f64::total_cmp);
    Measure {
        millis: times[times.len() / 2],
        first_millis,
        peak_mib: peak as f64 / MIB,
        device_peak_mib: device_peak.map(|bytes| bytes as f64 / MIB),
    }
}

/// Tells glibc's allocator to keep freed memory for reuse rather than hand it back to the
/// kernel. A training step allocates and frees the same large tensors every step; by default
/// glibc maps each allocation above 128 KiB afresh and unmaps it when freed (and trims the heap
/// top), so every step paid its page faults again: about half of a PEDConv layer's time on
/// flex, measured with `perf`. Allocations up to 32 MiB (glibc's largest threshold) then come
/// from the heap, which is trimmed only above 1 GiB of free space. Other platforms are left as
/// they are.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A measured run that panics (as a CUDA error or an autotune failure does) ends the
    /// sampling and passes the panic on, with its message, instead of leaving the sampling
    /// thread to run for ever.
    #[test]
    fn a_panicking_measurement_ends_with_its_panic() {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sampler = DevicePeak {
                in_use: Box::new(|| Some(1 << 20)),
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sampler.during(|| panic!("the measured step failed"))
            }));
            let _ = sender.send(outcome.map_err(|panic| {
                panic
                    .downcast_ref::<&str>()
                    .map(|message| message.to_string())
            }));
        });
        let outcome = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the measurement ended within 30 s");
        assert_eq!(
            outcome,
            Err(Some("the measured step failed".to_string())),
            "the measurement passes the work's panic on"
        );
    }

    /// Sampling a run that returns keeps the largest count seen above the count before it.
    #[test]
    fn the_sampled_peak_is_the_largest_count_seen() {
        use std::sync::Arc;
        let count = Arc::new(AtomicU64::new(100));
        let seen_high = Arc::new(AtomicBool::new(false));
        let sampler = DevicePeak {
            in_use: Box::new({
                let (count, seen_high) = (count.clone(), seen_high.clone());
                move || {
                    let now = count.load(Ordering::SeqCst);
                    if now == 400 {
                        seen_high.store(true, Ordering::SeqCst);
                    }
                    Some(now)
                }
            }),
        };
        let peak = sampler.during(|| {
            count.store(400, Ordering::SeqCst);
            while !seen_high.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            count.store(150, Ordering::SeqCst);
        });
        assert_eq!(peak, Some(300));
    }

    #[cfg(feature = "flex")]
    /// The binary's allocator counts the heap: a 64 MiB vector shows as at least 64 MiB. The
    /// first run is timed apart from the median: here it alone sleeps.
    #[test]
    fn peak_memory_counts_allocations() {
        let mut runs = 0;
        let measured = measure::<burn::backend::Flex>(3, &Default::default(), || {
            runs += 1;
            if runs == 1 {
                std::thread::sleep(Duration::from_millis(200));
            }
            let buffer = vec![1u8; 64 << 20];
            std::hint::black_box(&buffer);
        });
        assert_eq!(
            runs,
            2 + 1 + 3,
            "two warm-ups, the peak's run, the timed runs"
        );
        assert!(measured.peak_mib >= 64.0, "{measured:?}");
        assert!(measured.first_millis >= 200.0, "{measured:?}");
        assert!(measured.millis < 200.0, "{measured:?}");
    }
}
