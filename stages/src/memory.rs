//! Large voxel buffers.
//!
//! Fresh zeroed memory costs no pass of its own (the system hands out zero pages), but each
//! 4 KiB page faults on its first write: 35,000 faults for the 143 MB image of one BraTS case,
//! and on two cores those faults were a third of preprocessing time. Buffers made here are
//! marked for transparent huge pages, so they fault in 2 MiB at a time where the system
//! allows it (Linux with THP `enabled` set to `madvise` or `always`); the transposing decode
//! also misses the TLB less on them. Elsewhere they are plain zeroed vectors.

/// A zeroed buffer of `len` values for a volume.
pub fn zeroed<T: Clone + Default>(len: usize) -> Vec<T> {
    // `vec![0; n]` of a primitive is one calloc: no pass over the memory.
    let mut buffer = vec![T::default(); len];
    advise_huge_pages(&mut buffer);
    buffer
}

/// Marks the whole 2 MiB pages inside a buffer that has not been written yet (its pages not
/// yet faulted in) for transparent huge pages. Only advice: nothing changes if refused.
pub fn advise_huge_pages<T>(buffer: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let start = buffer.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buffer);
        let first = start.next_multiple_of(HUGE_PAGE);
        let last = end / HUGE_PAGE * HUGE_PAGE;
        if last > first {
            // SAFETY: [first, last) lies inside `buffer`'s allocation; MADV_HUGEPAGE only
            // changes how its pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

/// Makes every allocation of 4 MiB or more a mapping of its own, handed back to the system
/// when freed. glibc otherwise raises that threshold as large blocks are freed (up to 32 MiB),
/// and blocks under it stay in the heap, which fragments over hundreds of cases: the peak
/// memory of preprocessing then grew with the number of cases (`benches/cache_memory.sh`: 40
/// cases against 10, medians 1.10× before, 1.06× with a fixed 4 MiB threshold). Voxel
/// volumes, label maps and inflate buffers are all above it; zstd's chunk buffers are not.
/// Call once at the start of a program; a no-op outside glibc.
pub fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_zero_and_writable() {
        let mut big: Vec<f32> = zeroed(3 << 20);
        assert_eq!(big.len(), 3 << 20);
        assert!(big.iter().all(|&v| v == 0.0));
        big[(3 << 20) - 1] = 1.0;
        let small: Vec<u8> = zeroed(10);
        assert_eq!(small, vec![0u8; 10]);
        advise_huge_pages::<u8>(&mut []);
    }
}
