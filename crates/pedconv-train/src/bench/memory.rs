//! Timing and peak host memory of a piece of work.
//!
//! The `pedconv` binary counts its heap through [`CountingAllocator`] (two relaxed atomic
//! updates per allocation), so the benchmark can report the peak memory of a step: the largest
//! number of heap bytes allocated during it beyond what was allocated before it. On the CPU
//! backends that is where tensors live; on GPU backends it is host memory only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

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

/// Median time and peak extra heap of a piece of work.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measure {
    /// Median over the timed repetitions, in milliseconds.
    pub millis: f64,
    /// Peak heap above the heap before the first (warm-up) run, in MiB.
    pub peak_mib: f64,
}

/// Runs `work` once to warm up (and to measure its peak memory), then `reps` times on the clock.
/// `work` must synchronise the device before it returns.
pub fn measure(reps: usize, mut work: impl FnMut()) -> Measure {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    work();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
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
        peak_mib: peak as f64 / (1024.0 * 1024.0),
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

    /// The binary's allocator counts the heap: a 64 MiB vector shows as at least 64 MiB.
    #[test]
    fn peak_memory_counts_allocations() {
        let measured = measure(1, || {
            let buffer = vec![1u8; 64 << 20];
            std::hint::black_box(&buffer);
        });
        assert!(measured.peak_mib >= 64.0, "{measured:?}");
        assert!(measured.millis >= 0.0);
    }
}
