//! Process set-up for glibc's `malloc`: keep freed memory for reuse instead of handing it back.
//!
//! burn's CPU backend allocates a fresh buffer for every op's output, and a GRPO step's
//! tensors are large (one micro-batch's logits are `[scored tokens, 49,152]` f32, 50–200 MB;
//! the tied embedding's gradient is 113 MB). glibc serves blocks above its dynamic mmap
//! threshold (at most 32 MiB) with `mmap` and returns them with `munmap` when freed, and it
//! trims the heap's top above 128 KiB, so the next step's buffers arrive as fresh pages that
//! the kernel faults in and zeroes again: `perf record` on the learner's pass showed 15–17% of
//! the process in page faults and `clear_page_erms`. Raising both thresholds keeps those pages
//! in the heap, where the next allocation of the same size reuses them (the learner's pass
//! 4.8–5.8 s → 4.0–4.4 s on 2 cores; `BENCHMARKS.md`, "Allocator").
//!
//! The cost is a resident size that stays at its peak. A `GLIBC_TUNABLES` that sets any
//! `glibc.malloc.*` tunable wins: kaizen then leaves `malloc` as the user configured it.

/// Blocks up to this size come from the heap (glibc's default: dynamic, 128 KiB – 32 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 30;
/// The heap's free top is returned to the system only above this size (default 128 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;
/// Extra bytes requested whenever the heap grows, so that it grows in few steps (default 128 KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: libc::c_int = 256 << 20;

/// One arena for every thread. glibc gives other threads (the rayon pool, which runs the
/// learner's pass) their own arenas, whose heaps hold at most 64 MiB: larger blocks there are
/// `mmap`ed whatever the threshold above, and unmapped again when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;

/// Applies the settings above (glibc on Linux; elsewhere a no-op). Call once, early in
/// `main`, before other threads start.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if user_set {
            tracing::debug!("GLIBC_TUNABLES sets malloc tunables; leaving malloc as configured");
            return;
        }
        apply();
    }
}

/// Sets the three parameters (see the module docs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() {
    for (name, option, value) in [
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ("M_TOP_PAD", libc::M_TOP_PAD, TOP_PAD),
        ("M_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX),
    ] {
        // SAFETY: `mallopt` only changes malloc's parameters, under malloc's own lock.
        let accepted = unsafe { libc::mallopt(option, value) } == 1;
        if !accepted {
            tracing::debug!("glibc rejected mallopt({name}, {value}); keeping its default");
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Bytes glibc currently holds in `mmap`ed blocks (all arenas).
    fn mmapped_bytes() -> usize {
        // SAFETY: `mallinfo2` only reads malloc's statistics.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn large_blocks_come_from_the_heap() {
        apply();
        // 16 MiB: above glibc's initial mmap threshold (128 KiB), below a thread arena's
        // 64 MiB heap, so it is the settings that decide where it comes from.
        let size = 16 << 20;
        let before = mmapped_bytes();
        let block = std::hint::black_box(vec![1u8; size]);
        let during = mmapped_bytes();
        drop(block);
        assert!(
            during < before + size,
            "a {size}-byte block was mmapped ({before} -> {during} bytes in mmapped blocks)"
        );
    }
}
