//! Sessions and their token streams.

use crate::raw::wasi::io::poll::Pollable;
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

    /// Evaluate token ids into the session (each is checked against the
    /// vocabulary); returns how many were added.
    pub fn append_tokens(&self, tokens: &[u32]) -> Result<u32, Error> {
        Ok(self.raw.append_tokens(tokens)?)
    }

    /// Tokens the session holds.
    pub fn len(&self) -> u32 {
        self.raw.len()
    }

    /// Whether the session holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tokens the session holds.
    pub fn tokens(&self) -> Vec<u32> {
        self.raw.tokens()
    }

    /// Most tokens the session may hold.
    pub fn context_limit(&self) -> u32 {
        self.raw.context_limit()
    }

    /// Tokens that still fit.
    pub fn remaining(&self) -> u32 {
        self.context_limit().saturating_sub(self.len())
    }

    /// Drop the last `n` tokens (to regenerate or edit a turn); returns the new length.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Params, Session};
    /// let session = Session::open(&Model::load("smollm2")?)?;
    /// session.append("Once upon a time")?;
    /// let before = session.len();
    /// let (_, finish) = session.generate(&Params::greedy().max_tokens(8))?.collect_text()?;
    /// session.rewind(finish.usage.generated_tokens)?; // try again
    /// assert_eq!(session.len(), before);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn rewind(&self, n: u32) -> Result<u32, Error> {
        Ok(self.raw.rewind(n)?)
    }

    /// Drop every token.
    pub fn reset(&self) -> Result<(), Error> {
        Ok(self.raw.reset()?)
    }

    /// An independent session holding the same tokens; the host copies the
    /// KV cache, so nothing is evaluated again.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Session};
    /// let session = Session::open(&Model::load("smollm2")?)?;
    /// session.append("A long shared prefix")?;
    /// let branch = session.fork()?;
    /// branch.append(" that goes one way")?;
    /// session.append(" and another")?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn fork(&self) -> Result<Session, Error> {
        Ok(Session { raw: self.raw.fork()? })
    }

    /// The session (tokens and KV cache) as a versioned blob bound to this
    /// model, to [`restore`](Self::restore) later, in this or another host
    /// process.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Session};
    /// let model = Model::load("smollm2")?;
    /// let session = Session::open(&model)?;
    /// session.append("A conversation worth keeping")?;
    /// std::fs::write("chat.session", session.save()?).unwrap();
    /// let again = Session::restore(&model, &std::fs::read("chat.session").unwrap())?;
    /// assert_eq!(again.tokens(), session.tokens());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn save(&self) -> Result<Vec<u8>, Error> {
        Ok(self.raw.save()?)
    }

    /// A session from a [`save`](Self::save) blob; a truncated, corrupted or
    /// foreign blob is refused with `invalid-snapshot`.
    pub fn restore(model: &Model, snapshot: &[u8]) -> Result<Self, Error> {
        Ok(Self { raw: raw::Session::restore(model.graph(), snapshot)? })
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

    /// Wait for the next token, then take everything already generated, up
    /// to `max_tokens` tokens, as one chunk: fewer host calls for a guest
    /// that does not need each token as it comes. `None` at the end.
    pub fn next_chunk(&mut self, max_tokens: u32) -> Option<Result<Chunk, Error>> {
        if self.finish.is_some() {
            return None;
        }
        match self.raw.next_chunk(max_tokens) {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.finish = self.raw.finish();
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Stop generating now; the session keeps the chunks already read, and
    /// [`finish`](Self::finish) reports `cancelled` with their usage.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.raw.cancel();
            self.finish = self.raw.finish();
        }
    }

    /// A pollable that is ready when [`try_next`](Self::try_next) has
    /// something, so one guest can wait on several streams (and timers) at
    /// once with [`poll`](crate::poll). Drop it before the stream.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{poll, Model, Params, Session};
    /// # let model = Model::load("smollm2")?;
    /// # let (a, b) = (Session::open(&model)?, Session::open(&model)?);
    /// # a.append("One")?; b.append("Two")?;
    /// let mut streams = [a.generate(&Params::greedy())?, b.generate(&Params::greedy())?];
    /// let pollables: Vec<_> = streams.iter().map(|s| s.subscribe()).collect();
    /// while streams.iter().any(|s| s.finish().is_none()) {
    ///     for i in poll(&pollables.iter().collect::<Vec<_>>()) {
    ///         while let Some(chunk) = streams[i as usize].try_next()? {
    ///             print!("[{i}] {}", chunk.text);
    ///         }
    ///     }
    /// }
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn subscribe(&self) -> Pollable {
        self.raw.subscribe()
    }

    /// The next chunk if one is ready, without waiting. `None` means nothing
    /// is ready yet, or the end ([`finish`](Self::finish) is then `Some`).
    pub fn try_next(&mut self) -> Result<Option<Chunk>, Error> {
        if self.finish.is_some() {
            return Ok(None);
        }
        let chunk = self.raw.try_next()?;
        if chunk.is_none() {
            self.finish = self.raw.finish();
        }
        Ok(chunk)
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
        self.next_chunk(1)
    }
}
