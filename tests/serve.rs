//! `wasi-nn-llm serve` with the OpenAI-compatible guest as a WASI 0.2
//! proxy (`examples/openai-server`, an instance per request), driven from outside as users drive it: the
//! stock `openai` Python client (`tests/serve/client.py`, installed by the
//! test command's bootstrap), curl, and a raw socket for a client that
//! goes away. Every server is a separate host process on the real model.

/// The server under test.
const SERVER: &str = "openai-server";

include!("serve/suite.rs");
