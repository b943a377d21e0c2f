//! Sessions and their token streams.

use crate::raw::wasi_nn_llm::llm::session as raw;
use crate::{Chunk, Error, Finish, Model, Params, SessionOptions};

/// A conversation held in the host's KV cache.
pub struct Session {
    raw: raw::Session,
}

impl Session {
    /// Open an empty session with the host's defaults.
    pub fn open(model: &Model) -> Result<Self, Error> {
        Self::open_with(model, SessionOptions { context_length: None, seed: None, overflow: None })
    }

    /// Open an empty session with options (context length, default seed).
    pub fn open_with(model: &Model, options: SessionOptions) -> Result<Self, Error> {
        Ok(Self { raw: raw::Session::open(model.graph(), options)? })
    }

    /// Evaluate `text` into the session (special tokens such as `<|im_start|>`
    /// are parsed); returns how many tokens were added.
    pub fn append(&self, text: &str) -> Result<u32, Error> {
        Ok(self.raw.append(text)?)
    }

    /// Generate from the end of the session.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Params, Session};
    /// let session = Session::open(&Model::load("smollm2")?)?;
    /// session.append("The capital of France is")?;
    /// let (text, finish) = session.generate(&Params::greedy().max_tokens(8))?.collect_text()?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn generate(&self, params: &Params) -> Result<TokenStream, Error> {
        Ok(TokenStream { raw: self.raw.generate(params.as_raw())?, finish: None })
    }

    /// The raw resource.
    pub fn as_raw(&self) -> &raw::Session {
        &self.raw
    }
}

/// A generation in progress; iterate it for [`Chunk`]s. Dropping it early
/// cancels the generation, and the session keeps what was taken.
pub struct TokenStream {
    raw: raw::TokenStream,
    finish: Option<Finish>,
}

impl TokenStream {
    /// Why and how the generation ended, once the iterator is exhausted.
    pub fn finish(&self) -> Option<&Finish> {
        self.finish.as_ref()
    }

    /// Read to the end; returns the whole text and how it finished.
    pub fn collect_text(mut self) -> Result<(String, Finish), Error> {
        let mut text = String::new();
        for chunk in &mut self {
            text.push_str(&chunk?.text);
        }
        let finish = self.finish.take().expect("an exhausted stream has finished");
        Ok((text, finish))
    }
}

impl Iterator for TokenStream {
    type Item = Result<Chunk, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finish.is_some() {
            return None;
        }
        match self.raw.next() {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.finish = self.raw.finish();
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}
