//! Base wasi-nn backends, served through wasmtime-wasi-nn's public backend
//! traits so that the extension is shown to layer on the stock wasi-nn host.
//!
//! One backend today: [`ggml`], on the same [`Engine`](crate::engine::Engine)
//! as the extension.

pub mod ggml;
