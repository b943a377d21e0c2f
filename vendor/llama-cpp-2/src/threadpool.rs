//! Safe wrapper around ggml's CPU thread pool (`ggml_threadpool`).
//!
//! Added by wasi-nn-llm (not in the published 0.1.160). Without a pool of
//! its own, a context built without OpenMP makes and joins fresh worker
//! threads for every graph; with one (attached through
//! [`LlamaContext::attach_threadpool`](crate::context::LlamaContext::attach_threadpool)),
//! the workers live between decodes and spin on ggml's barriers, as
//! `llama-bench` and `llama-cli` run them.

use std::ptr::NonNull;

/// A pool of `n_threads - 1` ggml worker threads; the thread that calls
/// `llama_decode` is the pool's first worker.
#[derive(Debug)]
pub struct ThreadPool {
    pool: NonNull<llama_cpp_sys_2::ggml_threadpool>,
    n_threads: i32,
}

// SAFETY: the pool is a heap object that ggml's workers and the decoding
// thread share through its own mutex and atomics; which thread owns the
// handle does not matter. `pause` and `resume` take the pool's mutex, so
// they may be called from any thread, even while a graph runs (a running
// graph finishes; the next one resumes the pool). Only `ggml_threadpool_free`
// needs exclusive use, and `Drop` has it.
unsafe impl Send for ThreadPool {}
// SAFETY: see `Send`: every method taking `&self` locks the pool's mutex.
unsafe impl Sync for ThreadPool {}

impl ThreadPool {
    /// Start a pool of `n_threads` (at least 1), created paused so its
    /// workers sleep until the first graph. `poll` (0–100) is how long
    /// workers spin for the next graph before they sleep: 0 never spins,
    /// 50 is llama.cpp's default.
    ///
    /// Returns `None` if ggml could not create the pool.
    #[must_use]
    pub fn new(n_threads: u32, poll: u32) -> Option<Self> {
        let n_threads = i32::try_from(n_threads.max(1)).ok()?;
        // SAFETY: plain constructor of a parameter struct.
        let mut params = unsafe { llama_cpp_sys_2::ggml_threadpool_params_default(n_threads) };
        params.poll = poll.min(100);
        params.paused = true;
        // SAFETY: `params` is a valid, initialised parameter struct that
        // ggml only reads.
        let pool = unsafe { llama_cpp_sys_2::ggml_threadpool_new(&mut params) };
        NonNull::new(pool).map(|pool| Self { pool, n_threads })
    }

    /// Threads the pool runs a graph on (its workers and the caller).
    #[must_use]
    pub fn n_threads(&self) -> i32 {
        self.n_threads
    }

    /// Put the workers to sleep now instead of letting them spin for the
    /// next graph; the next graph wakes them.
    pub fn pause(&self) {
        // SAFETY: the pool is live (freed only in `Drop`); pausing locks its mutex.
        unsafe { llama_cpp_sys_2::ggml_threadpool_pause(self.pool.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut llama_cpp_sys_2::ggml_threadpool {
        self.pool.as_ptr()
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // SAFETY: no context uses the pool any more: an attached pool is
        // owned by its context, which drops it only after `llama_free` or
        // after detaching it.
        unsafe { llama_cpp_sys_2::ggml_threadpool_free(self.pool.as_ptr()) }
    }
}
