//! Whole-file gzip decompression with libdeflate.
//!
//! A `.nii.gz` is nearly always one gzip member whose trailer gives the decompressed size,
//! so the whole file can be inflated in one call into a buffer of exactly that size.
//! libdeflate does that about 1.7× faster than streaming zlib-rs on BraTS volumes (measured
//! on the four modalities of a 240×240×155 case: 115 ms against 200 ms), and gzip
//! decompression is the largest single cost of decoding. Anything unusual (several members,
//! a wrong trailer, corrupt data) returns `None`, and the caller decodes the stream with
//! flate2, which reports errors with their position.

use std::cell::Cell;
use std::os::raw::c_void;

use libdeflate_sys::{
    libdeflate_alloc_decompressor, libdeflate_free_decompressor, libdeflate_gzip_decompress_ex,
    libdeflate_result_LIBDEFLATE_SUCCESS,
};

thread_local! {
    /// Inflated buffers this thread let go of, kept for its next files. A BraTS case inflates
    /// four 18 MB volumes (held together while a crop is found in them) and a label, and
    /// fresh memory costs a page fault (and the system's zeroing) per page; a reused buffer
    /// costs neither.
    static SPARES: Cell<Vec<Vec<u8>>> = const { Cell::new(Vec::new()) };
}

/// Buffers larger than this are returned to the system rather than kept per thread.
const SPARE_LIMIT: usize = 64 << 20;
/// Most buffers kept per thread: a case's files, with room for a few more modalities.
const SPARES_KEPT: usize = 8;

/// An empty buffer with room for `capacity` bytes: the smallest of the thread's spare ones
/// that is large enough, else a new one.
fn take_spare(capacity: usize) -> Option<Vec<u8>> {
    let mut spares = SPARES.take();
    let fit = spares
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= capacity)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    let buffer = fit.map(|i| spares.swap_remove(i));
    SPARES.set(spares);
    let mut buffer = match buffer {
        Some(b) => b,
        None => {
            let mut b = Vec::new();
            b.try_reserve_exact(capacity).ok()?;
            crate::memory::advise_huge_pages(b.spare_capacity_mut());
            b
        }
    };
    buffer.clear();
    Some(buffer)
}

/// Hands an inflated buffer back for the thread's next files; with the thread's spares full,
/// the smallest one goes back to the system.
pub(crate) fn release(buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > SPARE_LIMIT {
        return;
    }
    let mut spares = SPARES.take();
    spares.push(buffer);
    if spares.len() > SPARES_KEPT
        && let Some(smallest) = (0..spares.len()).min_by_key(|&i| spares[i].capacity())
    {
        spares.swap_remove(smallest);
    }
    SPARES.set(spares);
}

/// The decompressed bytes when `input` is exactly one gzip member of `expected` bytes.
pub(crate) fn gunzip_single_member(input: &[u8], expected: usize) -> Option<Vec<u8>> {
    struct Decompressor(*mut libdeflate_sys::libdeflate_decompressor);
    impl Drop for Decompressor {
        fn drop(&mut self) {
            // SAFETY: allocated by libdeflate_alloc_decompressor and freed once.
            unsafe { libdeflate_free_decompressor(self.0) }
        }
    }
    // SAFETY: no preconditions; null means out of memory.
    let decompressor = Decompressor(unsafe { libdeflate_alloc_decompressor() });
    if decompressor.0.is_null() {
        return None;
    }
    let mut out = take_spare(expected)?;
    let (mut read, mut written) = (0usize, 0usize);
    // SAFETY: `input` is valid for `input.len()` bytes; `out` has capacity for `expected`
    // bytes, libdeflate writes at most that many and reports how many it wrote.
    let result = unsafe {
        libdeflate_gzip_decompress_ex(
            decompressor.0,
            input.as_ptr() as *const c_void,
            input.len(),
            out.as_mut_ptr() as *mut c_void,
            expected,
            &mut read,
            &mut written,
        )
    };
    if result != libdeflate_result_LIBDEFLATE_SUCCESS || read != input.len() || written != expected
    {
        release(out);
        return None;
    }
    // SAFETY: libdeflate initialised the first `written` == `expected` bytes.
    unsafe { out.set_len(expected) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn released_buffers_are_reused_smallest_fit_first_and_bounded_in_number() {
        // A thread of its own: the spares are per thread.
        std::thread::spawn(|| {
            let sizes = [4 << 10, 64 << 10, 16 << 10];
            let buffers: Vec<Vec<u8>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
            let at: Vec<*const u8> = buffers.iter().map(|b| b.as_ptr()).collect();
            buffers.into_iter().for_each(release);
            let mid = take_spare(10 << 10).unwrap();
            assert_eq!(
                (mid.as_ptr(), mid.len()),
                (at[2], 0),
                "the 16 KiB one fits best"
            );
            let big = take_spare(20 << 10).unwrap();
            assert_eq!(big.as_ptr(), at[1]);
            let fresh = take_spare(100 << 10).unwrap();
            assert!(fresh.capacity() >= 100 << 10 && !at.contains(&fresh.as_ptr()));
            for n in 1..=SPARES_KEPT + 3 {
                release(Vec::with_capacity(n << 10));
            }
            let kept = SPARES.take();
            assert_eq!(kept.len(), SPARES_KEPT);
            assert!(
                kept.iter().all(|b| b.capacity() >= 4 << 10),
                "the smallest went"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn one_member_inflates_and_anything_else_declines() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let one = gzip(&data);
        assert_eq!(
            gunzip_single_member(&one, data.len()).as_deref(),
            Some(&data[..])
        );
        // A wrong size, two members, a truncated or corrupted file: not handled here.
        assert!(gunzip_single_member(&one, data.len() - 1).is_none());
        assert!(gunzip_single_member(&one, data.len() + 1).is_none());
        let mut two = one.clone();
        two.extend_from_slice(&gzip(&data[..1000]));
        assert!(gunzip_single_member(&two, data.len() + 1000).is_none());
        assert!(gunzip_single_member(&one[..one.len() / 2], data.len()).is_none());
        let mut bad = one.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(gunzip_single_member(&bad, data.len()).is_none());
    }
}
