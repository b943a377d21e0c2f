//! A wasmtime host that serves base wasi-nn and an LLM extension to it from
//! one engine, on llama.cpp or another backend behind the engine's seam.
//!
//! Where a token goes: [`wit`] (extension), [`p3`] (its experimental
//! WASIp3 draft), [`wasi_nn`] (base wasi-nn) or [`wasmedge`]
//! (WasmEdge's GGML ABI, for wasip1 guests) receives the guest's call (for an HTTP guest, [`serve`] turns a
//! request into that guest's instance first) → [`engine::Session`] sends it to the
//! model's scheduler thread ([`engine`]) → the model's [`backend`] (llama.cpp)
//! decodes and samples →
//! whole-character chunks come back through a [`engine::TokenStream`].
//! [`registry`] decides which models exist and what each guest may reach of
//! them under the operator's [`policy`], [`catalog`] fetches the known ones,
//! and [`runner`] instantiates guests.

#![warn(missing_docs)]

pub mod backend;
pub mod cache;
pub mod catalog;
pub mod chat;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod p3;
pub mod policy;
pub mod registry;
pub mod runner;
pub mod serve;
pub mod wasi_nn;
pub mod wasmedge;
pub mod wit;

pub use error::LlmError;
