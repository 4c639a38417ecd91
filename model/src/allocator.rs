//! jemalloc, set to keep the memory it frees, for the binaries that train the model.
//!
//! A training step on the CPU allocates and frees the same large buffers every step: burn's tensor
//! operations return fresh tensors (the first Swin stage's MLP activation is 85 MB, a 48-channel
//! feature map of the decoder at 96³ 170 MB), and glibc's `malloc` serves every block above 32 MB with a fresh `mmap` and
//! returns it with `munmap`. Each step then faults every page of them in again, 4 KiB at a time;
//! in a profile of the `reference` encoder's forward and backward passes the kernel's page clearing
//! alone was 20 % of the samples.
//!
//! jemalloc set to never purge (`dirty_decay_ms:-1`, `muzzy_decay_ms:-1`), with no dedicated arena
//! for large blocks (`oversize_threshold:0`, whose blocks it would purge at once) and transparent
//! huge pages (`thp:always`), hands the previous step's pages back without a fault. Measured on the
//! `reference` preset, 2 threads (`model/README.md`), before the fused window attention and layer
//! norm: forward + backward 42.2 s → 30.3 s, peak resident memory 7.1 → 8.4 GB; after them the
//! gain is smaller than the machine's drift between runs, at 5.6 → 6.6 GB. With jemalloc's default
//! purging it was slower than glibc (the pages go back to the system and fault in again).
//!
//! The cost is that memory, once used, stays with the process until it ends; for a training or
//! preprocessing run that is its peak anyway. `_RJEM_MALLOC_CONF` overrides any setting at run
//! time, e.g. `_RJEM_MALLOC_CONF=dirty_decay_ms:10000,muzzy_decay_ms:10000` to give memory back
//! after ten idle seconds.
//!
//! A binary opts in with [`use_jemalloc!`](crate::use_jemalloc) (feature `jemalloc`); the library
//! itself never picks an allocator.

use std::ffi::{CStr, c_char, c_void};

#[doc(hidden)]
pub use tikv_jemallocator::Jemalloc;

/// The settings compiled into binaries that use [`use_jemalloc!`](crate::use_jemalloc).
pub const MALLOC_CONF: &str = "thp:always,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1";

/// [`MALLOC_CONF`] as the C string jemalloc reads at start-up.
#[doc(hidden)]
pub const MALLOC_CONF_C: [u8; MALLOC_CONF.len() + 1] = {
    let mut bytes = [0u8; MALLOC_CONF.len() + 1];
    let text = MALLOC_CONF.as_bytes();
    let mut i = 0;
    while i < text.len() {
        bytes[i] = text[i];
        i += 1;
    }
    bytes
};

/// Makes jemalloc with [`MALLOC_CONF`] the global allocator of the binary it is written in.
///
/// A macro rather than a static of this crate: jemalloc finds its settings through the symbol
/// `_rjem_malloc_conf`, and only a binary's own objects are sure to be linked.
#[macro_export]
macro_rules! use_jemalloc {
    () => {
        #[global_allocator]
        static GLOBAL_ALLOCATOR: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        #[allow(non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static malloc_conf: &[u8; $crate::allocator::MALLOC_CONF.len() + 1] =
            &$crate::allocator::MALLOC_CONF_C;
    };
}

/// The settings jemalloc runs with, read back from it: what [`MALLOC_CONF`] and
/// `_RJEM_MALLOC_CONF` made of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Transparent huge pages: `always`, `never` or `default`.
    pub thp: String,
    /// Milliseconds before freed pages go back to the system; −1: never.
    pub dirty_decay_ms: isize,
    /// The same for pages already marked reclaimable.
    pub muzzy_decay_ms: isize,
    /// Blocks above this many bytes get an arena of their own (0: none).
    pub oversize_threshold: usize,
}

impl std::fmt::Display for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "jemalloc (thp {}, dirty_decay_ms {}, muzzy_decay_ms {}, oversize_threshold {})",
            self.thp, self.dirty_decay_ms, self.muzzy_decay_ms, self.oversize_threshold
        )
    }
}

/// Reads one `opt.*` value of type `T` from jemalloc.
fn read<T: Copy>(name: &CStr, mut value: T) -> Option<T> {
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `value` is a `T` of `len` bytes, the size jemalloc documents for these options;
    // nothing is written (the new-value pointer is null).
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut value).cast::<c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (status == 0 && len == std::mem::size_of::<T>()).then_some(value)
}

/// jemalloc's settings, or `None` if it does not answer.
///
/// Only meaningful in a binary that uses [`use_jemalloc!`](crate::use_jemalloc): elsewhere it
/// describes a jemalloc that allocates nothing.
pub fn settings() -> Option<Settings> {
    let thp: *const c_char = read(c"opt.thp", std::ptr::null())?;
    if thp.is_null() {
        return None;
    }
    // SAFETY: jemalloc returns a pointer to one of its static, NUL-terminated option names.
    let thp = unsafe { CStr::from_ptr(thp) }
        .to_string_lossy()
        .into_owned();
    Some(Settings {
        thp,
        dirty_decay_ms: read(c"opt.dirty_decay_ms", 0)?,
        muzzy_decay_ms: read(c"opt.muzzy_decay_ms", 0)?,
        oversize_threshold: read(c"opt.oversize_threshold", 0)?,
    })
}
