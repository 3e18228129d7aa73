//! Timing and peak memory of a piece of work.
//!
//! The `pedconv` binary counts its heap through [`CountingAllocator`] (two relaxed atomic
//! updates per allocation), so the benchmark can report the peak memory of a step: the largest
//! number of heap bytes allocated during it beyond what was allocated before it. On the CPU
//! backends that is where tensors live. On the CubeCL backends (wgpu, CUDA) tensors live in
//! CubeCL's memory pools, which keep what they have reserved until cleaned up and reserve more
//! only when the bytes in use need it: the pools' growth over a step, from cleaned pools, is
//! the device memory the step needed at its peak (with the pools' rounding), and
//! [`device_reserved`] reads it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Median time and peak extra memory of a piece of work.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measure {
    /// Median over the timed repetitions, in milliseconds.
    pub millis: f64,
    /// Peak heap above the heap before the first (warm-up) run, in MiB.
    pub peak_mib: f64,
    /// On the CubeCL backends: the growth of the device's memory pools over the first run,
    /// from cleaned pools, in MiB.
    pub device_peak_mib: Option<f64>,
}

impl Measure {
    /// The peak that says most on this backend: the device's where it has one, else the heap's.
    pub fn peak(&self) -> f64 {
        self.device_peak_mib.unwrap_or(self.peak_mib)
    }
}

/// Bytes reserved by CubeCL's memory pools on `device`, when it is a CubeCL backend's device.
pub fn device_reserved<D: Any>(device: &D) -> Option<u64> {
    let device = device as &dyn Any;
    #[cfg(feature = "wgpu")]
    if let Some(device) = device.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        return reserved::<burn::backend::wgpu::WgpuRuntime>(device);
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = device.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        return reserved::<burn_cubecl::cubecl::cuda::CudaRuntime>(device);
    }
    let _ = device;
    None
}

#[allow(dead_code)] // unused without the CubeCL backends' features
fn reserved<R: burn_cubecl::cubecl::Runtime>(device: &R::Device) -> Option<u64> {
    let usage = R::client(device).memory_usage().ok()?;
    Some(usage.bytes_reserved)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `work` once to warm up (and to measure its peak memory), then `reps` times on the clock.
/// `work` runs on `device` of `B` and must synchronise it before it returns.
pub fn measure<B: Backend>(reps: usize, device: &B::Device, mut work: impl FnMut()) -> Measure {
    B::memory_cleanup(device);
    let device_before = device_reserved(device);
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    work();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let device_peak_mib = device_before
        .zip(device_reserved(device))
        .map(|(before, after)| after.saturating_sub(before) as f64 / MIB);
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Measure {
        millis: times[times.len() / 2],
        peak_mib: peak as f64 / MIB,
        device_peak_mib,
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

    #[cfg(feature = "flex")]
    /// The binary's allocator counts the heap: a 64 MiB vector shows as at least 64 MiB.
    #[test]
    fn peak_memory_counts_allocations() {
        let measured = measure::<burn::backend::Flex>(1, &Default::default(), || {
            let buffer = vec![1u8; 64 << 20];
            std::hint::black_box(&buffer);
        });
        assert!(measured.peak_mib >= 64.0, "{measured:?}");
        assert!(measured.millis >= 0.0);
    }
}
