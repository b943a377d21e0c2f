//! The binary side of WasmEdge's `wasi_ephemeral_nn`: errnos, and reading
//! and writing the guest's linear memory at the addresses it passes.
//!
//! Every address and length comes from the guest, so every access is
//! checked against the memory's size first: a bad pointer is an errno
//! (`invalid-argument`), never a trap or a host panic.

use std::fmt;

use crate::error::LlmError;

/// The ABI's result codes: witx wasi-nn's 1 to 8, and the GGML plugin's
/// 100 to 102.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Errno {
    /// Success.
    Success = 0,
    /// The caller passed an invalid argument (also: a bad handle or address).
    InvalidArgument = 1,
    /// Unknown encoding, or text that is not JSON.
    InvalidEncoding = 2,
    /// The caller exports no linear memory.
    MissingMemory = 3,
    /// Busy: every session slot, or the guest's quota of them, is taken.
    Busy = 4,
    /// The engine failed (the host's fault).
    RuntimeError = 5,
    /// Not served by this host.
    UnsupportedOperation = 6,
    /// Over a limit.
    TooLarge = 7,
    /// No model by that name.
    NotFound = 8,
    /// `compute_single`: the generation has ended (not an error).
    EndOfSequence = 100,
    /// The context filled up during generation.
    ContextFull = 101,
    /// The prompt does not fit in the context.
    PromptTooLong = 102,
    // 103, WasmEdge's "model not found", is its check that a preloaded
    // model's file exists; this host loads every model before a guest runs.
}

/// An errno and why, for the guest's stderr: the ABI has room only for the
/// number, and the reason is what tells a prompt that is too long from a
/// model the policy denies.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// What the guest gets.
    pub errno: Errno,
    /// What the guest's stderr says.
    pub why: String,
}

impl Fault {
    /// `errno`, because of `why`.
    pub fn new(errno: Errno, why: impl Into<String>) -> Self {
        Self { errno, why: why.into() }
    }

    /// A bad handle or address.
    pub fn invalid(why: impl Into<String>) -> Self {
        Self::new(Errno::InvalidArgument, why)
    }
}

/// The engine's typed error as the ABI's nearest errno; the reason keeps
/// the rest.
impl From<LlmError> for Fault {
    fn from(e: LlmError) -> Self {
        let errno = match &e {
            LlmError::PromptTooLong(_) => Errno::PromptTooLong,
            LlmError::ContextFull(_) => Errno::ContextFull,
            LlmError::SessionBusy => Errno::Busy,
            LlmError::LimitExceeded { name, .. }
                if ["sessions", "instance-sessions", "concurrent-generations"].contains(&name.as_str()) =>
            {
                Errno::Busy
            }
            LlmError::LimitExceeded { .. } => Errno::TooLarge,
            LlmError::NotPermitted(_) | LlmError::Unsupported(_) => Errno::UnsupportedOperation,
            LlmError::EngineFailure(_) => Errno::RuntimeError,
            LlmError::UnsupportedGraph(_)
            | LlmError::InvalidArgument(_)
            | LlmError::InvalidToken { .. }
            | LlmError::InvalidGrammar(_)
            | LlmError::InvalidSnapshot(_) => Errno::InvalidArgument,
        };
        Self::new(errno, e.to_string())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?}): {}", self.errno as i32, self.errno, self.why)
    }
}

/// Tensor type numbers (witx wasi-nn): text comes as u8.
pub const TENSOR_U8: u32 = 3;

/// Graph encoding number of GGML.
pub const ENCODING_GGML: i32 = 6;

/// Largest text a guest may pass (a prompt, a name, a config): far past any
/// context, and small enough that copying it cannot exhaust the host.
pub const MAX_TEXT: u32 = 64 << 20;

/// The guest's linear memory during one call.
pub struct Memory<'a>(pub &'a mut [u8]);

/// A guest address or length: an i32 on the wire, an unsigned offset in memory.
fn offset(v: i32) -> usize {
    v as u32 as usize
}

impl Memory<'_> {
    fn range(&self, ptr: i32, len: usize, what: &str) -> Result<std::ops::Range<usize>, Fault> {
        let start = offset(ptr);
        match start.checked_add(len) {
            Some(end) if end <= self.0.len() => Ok(start..end),
            _ => Err(Fault::invalid(format!(
                "{what}: {len} bytes at address {start} lie outside the guest's {} bytes of memory",
                self.0.len()
            ))),
        }
    }

    /// `len` bytes at `ptr`.
    pub fn bytes(&self, ptr: i32, len: i32, what: &str) -> Result<&[u8], Fault> {
        let len = len as u32;
        if len > MAX_TEXT {
            return Err(Fault::new(Errno::TooLarge, format!("{what}: {len} bytes is over the host's {MAX_TEXT}")));
        }
        let range = self.range(ptr, len as usize, what)?;
        Ok(&self.0[range])
    }

    /// UTF-8 text of `len` bytes at `ptr`.
    pub fn text(&self, ptr: i32, len: i32, what: &str) -> Result<&str, Fault> {
        std::str::from_utf8(self.bytes(ptr, len, what)?)
            .map_err(|e| Fault::invalid(format!("{what} is not valid UTF-8: {e}")))
    }

    /// The little-endian u32 at `ptr`.
    pub fn u32(&self, ptr: i32, what: &str) -> Result<u32, Fault> {
        let range = self.range(ptr, 4, what)?;
        let b = &self.0[range];
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Store `value` at `ptr`, little-endian.
    pub fn put_u32(&mut self, ptr: i32, value: u32, what: &str) -> Result<(), Fault> {
        let range = self.range(ptr, 4, what)?;
        self.0[range].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    /// Copy `bytes` to `ptr`.
    pub fn put(&mut self, ptr: i32, bytes: &[u8], what: &str) -> Result<(), Fault> {
        let range = self.range(ptr, bytes.len(), what)?;
        self.0[range].copy_from_slice(bytes);
        Ok(())
    }

    /// The data of the 20-byte tensor at `ptr` (dims address and count,
    /// type, data address and length). The dimensions are checked to lie in
    /// memory and otherwise ignored, as the GGML plugin ignores them
    /// (LlamaEdge passes `[1]` for a prompt of any length); the type must
    /// be u8.
    pub fn tensor(&self, ptr: i32) -> Result<&[u8], Fault> {
        let field = |n: i32| self.u32(ptr.wrapping_add(4 * n), "the tensor");
        let (dims, rank, ty, data, len) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let rank_bytes = rank.checked_mul(4).ok_or_else(|| Fault::invalid("the tensor's rank is too large"))?;
        self.range(dims as i32, rank_bytes as usize, "the tensor's dimensions")?;
        if ty != TENSOR_U8 {
            return Err(Fault::invalid(format!(
                "the tensor's type is {ty}; the GGML backend takes text (u8, type {TENSOR_U8})"
            )));
        }
        self.bytes(data as i32, len as i32, "the tensor's data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_outside_memory_are_errnos() {
        let mut bytes = vec![0u8; 64];
        let mut memory = Memory(&mut bytes);
        assert_eq!(memory.bytes(60, 8, "x").unwrap_err().errno, Errno::InvalidArgument);
        assert_eq!(memory.bytes(-1, 1, "x").unwrap_err().errno, Errno::InvalidArgument);
        assert_eq!(memory.bytes(0, -1, "x").unwrap_err().errno, Errno::TooLarge);
        assert_eq!(memory.put_u32(62, 1, "x").unwrap_err().errno, Errno::InvalidArgument);
        memory.put_u32(60, 0xdead_beef, "x").unwrap();
        assert_eq!(memory.u32(60, "x").unwrap(), 0xdead_beef);
    }

    #[test]
    fn a_tensor_is_read_as_the_plugin_reads_it() {
        let mut bytes = vec![0u8; 128];
        let mut memory = Memory(&mut bytes);
        for (i, v) in [40u32, 1, TENSOR_U8, 64, 5].into_iter().enumerate() {
            memory.put_u32(8 + 4 * i as i32, v, "t").unwrap();
        }
        memory.put(64, b"hello", "t").unwrap();
        assert_eq!(memory.tensor(8).unwrap(), b"hello");
        memory.put_u32(16, 1, "t").unwrap(); // f32
        assert_eq!(memory.tensor(8).unwrap_err().errno, Errno::InvalidArgument);
        memory.put_u32(16, TENSOR_U8, "t").unwrap();
        memory.put_u32(12, u32::MAX, "t").unwrap(); // rank past memory
        assert_eq!(memory.tensor(8).unwrap_err().errno, Errno::InvalidArgument);
    }
}
