//! Cache prefetch hints: start loading a line the code will read or write a moment later,
//! so that its miss overlaps with other work (and other misses) instead of stalling it.
//!
//! A hint never faults and never changes a result: an address that is stale or not mapped
//! is simply not loaded. On targets other than x86-64 the hints do nothing.

/// Cache line size assumed by [`prefetch_tail`] and [`prefetch_head`].
const LINE: usize = 64;

/// What the code will do with a prefetched line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Read it: the line is shared with other cores' copies (samplers).
    Read,
    /// Write it: the line is fetched for ownership (the writer), so that the store that
    /// follows does not wait for it.
    Write,
}

/// Asks for the cache line holding `p`.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(p: *const T, intent: Intent) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the SSE prefetch instructions (PREFETCHT0, PREFETCHW) are hints: they do not
    // access memory architecturally and cannot fault, whatever the address; SSE is part of
    // the x86-64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_ET0, _MM_HINT_T0, _mm_prefetch};
        match intent {
            Intent::Read => _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()),
            Intent::Write => _mm_prefetch::<_MM_HINT_ET0>(p.cast::<i8>()),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, intent);
}

/// Asks for the cache lines of the last `items.len().min(count)` items of `items` (lists
/// ordered by time keep their newest entries last).
#[inline]
pub(crate) fn prefetch_tail<T>(items: &[T], count: usize, intent: Intent) {
    prefetch_all(&items[items.len() - items.len().min(count)..], intent);
}

/// Asks for the cache lines of the first `items.len().min(count)` items of `items`.
#[inline]
pub(crate) fn prefetch_head<T>(items: &[T], count: usize, intent: Intent) {
    prefetch_all(&items[..items.len().min(count)], intent);
}

/// Asks for every cache line `items` touches.
#[inline]
fn prefetch_all<T>(items: &[T], intent: Intent) {
    let bytes = std::mem::size_of_val(items);
    if bytes == 0 {
        return;
    }
    let start = items.as_ptr().cast::<u8>();
    // The first and last lines the items touch, as offsets from `start`'s line.
    let misalign = start as usize % LINE;
    for line in 0..=(misalign + bytes - 1) / LINE {
        // `wrapping_offset` keeps this free of pointer-arithmetic preconditions (the first
        // line may begin before `start`), and the hint tolerates any address.
        let at = start.wrapping_offset((line * LINE) as isize - misalign as isize);
        prefetch(at, intent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_accept_any_slice_and_any_address() {
        let v: Vec<u64> = (0..100).collect();
        for count in [0, 1, 7, 100, 1000] {
            prefetch_tail(&v, count, Intent::Read);
            prefetch_tail(&v[3..], count, Intent::Write);
            prefetch_head(&v[5..], count, Intent::Write);
        }
        prefetch_tail::<u64>(&[], 5, Intent::Read);
        prefetch_head::<u64>(&[], 5, Intent::Read);
        prefetch(std::ptr::null::<u8>(), Intent::Read);
        prefetch(usize::MAX as *const u8, Intent::Write);
        assert_eq!(v.iter().sum::<u64>(), 4950, "hints change nothing");
    }
}
