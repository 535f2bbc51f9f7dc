//! Shared pieces of the fuzz targets: an in-memory [`ByteSource`], a one-poll executor, the
//! allocation cap and the checks every target makes on the library's answers.
//!
//! The cap: no single allocation may exceed [`MAX_ALLOC`] (512 MiB, the same bound as
//! libFuzzer's `-malloc_limit_mb=512`, which only works in sanitizer builds). An allocation above
//! it fails, and Rust aborts with "memory allocation of N bytes failed": libFuzzer reports that
//! as a crash and saves the input. So a parser that sizes a buffer from a length the file
//! declares, rather than from the bytes that are there, is caught in every build mode.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use pseudoword::embedding_files::TextualInversion;
use pseudoword::error::WeightsError;
use pseudoword::weights::ByteSource;

/// Largest single allocation a parser may make (bytes).
pub const MAX_ALLOC: usize = 512 << 20;

struct Capped;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOC { std::ptr::null_mut() } else { unsafe { System.alloc(l) } }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOC { std::ptr::null_mut() } else { unsafe { System.alloc_zeroed(l) } }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > MAX_ALLOC { std::ptr::null_mut() } else { unsafe { System.realloc(p, l, new) } }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

/// A file held in memory, read the way the browser reads a `Blob`.
pub struct Mem<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

impl ByteSource for Mem<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, WeightsError> {
        let start = usize::try_from(offset).ok().filter(|&o| o <= self.bytes.len());
        let end = start.and_then(|s| s.checked_add(len)).filter(|&e| e <= self.bytes.len());
        match (start, end) {
            (Some(s), Some(e)) => Ok(self.bytes[s..e].to_vec()),
            _ => Err(WeightsError::Io { file: self.name.into(), reason: format!("read of {len} bytes at {offset} past the end") }),
        }
    }
}

/// Runs a future whose reads are all in memory: one poll must finish it.
pub fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory read returned Pending"),
    }
}

/// The contract of a typed error: it displays, and the message names the file.
pub fn check_err(e: &dyn std::fmt::Display, file: &str) {
    let msg = e.to_string();
    assert!(msg.contains(file), "error message does not name the file `{file}`: {msg}");
}

/// The contract of an embedding that was read: `n x dim` finite values and a non-empty token.
pub fn check_embedding(e: &TextualInversion) {
    assert!(e.n > 0 && e.dim > 0, "empty embedding {} x {}", e.n, e.dim);
    assert_eq!(Some(e.vectors.len()), e.n.checked_mul(e.dim), "values vs n x dim");
    assert!(e.vectors.iter().all(|v| v.is_finite()), "non-finite value accepted");
    assert!(!e.token.trim().is_empty(), "empty token accepted");
    assert_eq!(e.tokens().len(), e.n);
}
