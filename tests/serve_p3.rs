//! `tests/serve.rs`'s suite, every test of it, against the OpenAI-compatible
//! guest as a WASI 0.3 service (`examples/openai-server-p3`): one instance
//! reused for many requests, several at once. The tests of reuse itself
//! (isolation, quotas) are in `tests/serve/reuse.rs`, included below.

/// The server under test.
const SERVER: &str = "openai_server_p3";

include!("serve/suite.rs");

include!("serve/reuse.rs");

include!("serve/browser.rs");
