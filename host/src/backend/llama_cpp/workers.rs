//! The worker threads a llama.cpp context decodes on (how the engine's
//! lanes share the cores is `engine/cores.rs`).
//!
//! Why it is shaped this way (measured, `benches/RESULTS.md`): llama.cpp's
//! CPU backend synchronises its threads at a barrier after every op of the
//! graph, a few hundred times per token. Those barriers must spin: a thread
//! that sleeps at one and is woken costs tens of microseconds each time,
//! which is most of a small model's decode step.
//!
//! - With OpenMP (llama.cpp's default build), every host thread that runs a
//!   multi-threaded graph keeps a team of its own, and libgomp stops
//!   spinning (after ~100 iterations, whatever `GOMP_SPINCOUNT` says) once
//!   the process holds more OpenMP threads than CPUs. One context per lane,
//!   each on its own thread, crosses that line at two lanes; so does merely
//!   loading the model on one thread and decoding on another on a CPU with
//!   AMX (the AMX weight repacking runs an OpenMP team on the loading
//!   thread). Decode then ran 2–5× below llama.cpp's own tools.
//! - So this project builds llama.cpp without OpenMP (the workspace's
//!   `llama-cpp-2` features) and gives each lane ggml's own thread pools,
//!   whose barriers always spin. A pool runs one graph at a time, so a lane
//!   keeps one pool per thread count it has been given ([`Workers`]), and a
//!   pool whose lane has nothing to do is paused: its workers sleep instead
//!   of spinning on a core another lane needs. Between two decodes of a busy
//!   lane its workers spin for the next graph, as llama-bench's do.
//! - The engine's `Cores` divides the threads among the lanes busy at each
//!   decode, so the threads of all running graphs never exceed the cores
//!   (spinning barriers on an oversubscribed CPU would stall on a
//!   descheduled worker).

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::threadpool::ThreadPool;

/// How long a busy lane's workers spin for its next graph before they sleep
/// (ggml's 0–100 scale): llama.cpp's default, which llama-bench runs with.
const POLL: u32 = 50;

/// One lane's worker threads: a ggml pool per thread count the lane has run
/// with, the one in use attached to the lane's context, the others paused.
pub(crate) struct Workers {
    /// Paused pools, by thread count.
    spare: Vec<ThreadPool>,
    /// The thread count the context is set to.
    threads: u32,
}

impl Workers {
    /// Workers for a context created with `threads` threads (and no pool).
    pub fn new(threads: u32) -> Self {
        Self { spare: Vec::new(), threads }
    }

    /// Before a decode: run the context's graphs on `threads` threads.
    ///
    /// One thread needs no pool (ggml runs the graph on the calling thread).
    /// More get a pool of exactly that many, so every worker of a running
    /// pool has work in each graph: ggml's idle workers of a larger pool
    /// would spin between graphs on cores the other lanes use.
    pub fn run_on(&mut self, ctx: &mut LlamaContext<'_>, threads: u32) {
        if threads == self.threads && (threads == 1 || ctx.threadpool().is_some()) {
            return;
        }
        if let Some(old) = ctx.detach_threadpool() {
            old.pause();
            self.spare.push(old);
        }
        if threads > 1 {
            let pool = match self.spare.iter().position(|p| p.n_threads() == threads as i32) {
                Some(at) => Some(self.spare.swap_remove(at)),
                None => ThreadPool::new(threads, POLL),
            };
            match pool {
                Some(pool) => {
                    ctx.attach_threadpool(pool);
                }
                // ggml then makes threads for each graph: slower, still correct.
                None => tracing::warn!(threads, "ggml could not create a thread pool"),
            }
        }
        ctx.set_n_threads(threads as i32, threads as i32);
        self.threads = threads;
    }

    /// The lane has nothing to decode: its workers sleep until its next
    /// graph, leaving their cores to the other lanes.
    pub fn rest(&self, ctx: &LlamaContext<'_>) {
        if let Some(pool) = ctx.threadpool() {
            pool.pause();
        }
    }
}
