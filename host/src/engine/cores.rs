//! How a model's lanes share the CPU cores: before every decode a busy lane
//! takes an equal share of the model's threads, so the threads of all
//! running graphs never exceed the cores (a backend whose workers spin at
//! barriers, as llama.cpp's do, would stall on an oversubscribed CPU; see
//! `backend/llama_cpp/workers.rs`), and a lone busy lane gets them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The threads of one model, divided between its busy lanes.
pub(crate) struct Cores {
    threads: u32,
    busy: AtomicU32,
}

impl Cores {
    pub fn new(threads: u32) -> Arc<Self> {
        Arc::new(Self { threads: threads.max(1), busy: AtomicU32::new(0) })
    }

    /// Record that a lane became busy or idle; `lane_busy` is the lane's own
    /// flag, so each lane is counted at most once.
    pub fn set_busy(&self, lane_busy: &mut bool, busy: bool) {
        if *lane_busy != busy {
            *lane_busy = busy;
            if busy {
                self.busy.fetch_add(1, Ordering::AcqRel);
            } else {
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Threads for one busy lane now: an equal share, at least one.
    pub fn share(&self) -> u32 {
        (self.threads / self.busy.load(Ordering::Acquire).max(1)).max(1)
    }
}
