//! What a GGUF file says about its vocabulary, read without llama.cpp: its
//! metadata ([`gguf`]) and a tokenizer built from it ([`tokenizer`]) that
//! gives llama.cpp's token ids, pieces and end-of-generation tokens.
//!
//! Two users: the tensor-mode guest (`examples/chat-tensor`), which must
//! tokenize for itself because base wasi-nn only moves tensors, and the
//! host's candle backend, which shares no code with llama.cpp.

pub mod gguf;
pub mod tokenizer;

pub use gguf::Metadata;
pub use tokenizer::GgufTokenizer;
