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
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Session};
    /// let session = Session::open(&Model::load("smollm2")?)?;
    /// assert!(session.is_empty());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn open(model: &Model) -> Result<Self, Error> {
        Self::open_with(model, SessionOptions { context_length: None, seed: None, overflow: None })
    }

    /// Open an empty session with options (context length, default seed).
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, OverflowPolicy, Session, SessionOptions};
    /// let options = SessionOptions { context_length: Some(1024), seed: Some(7), overflow: Some(OverflowPolicy::Shift(64)) };
    /// let session = Session::open_with(&Model::load("smollm2")?, options)?;
    /// assert_eq!(session.context_limit(), 1024);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn open_with(model: &Model, options: SessionOptions) -> Result<Self, Error> {
        Ok(Self { raw: raw::Session::open(model.graph(), options)? })
    }

    /// A session holding `prompt` (token ids), continued from the longest
    /// prefix of it the host's prefix cache keeps for this component: only
    /// the rest is evaluated, and the first reply's
    /// [`Usage::cached_tokens`](crate::Usage) counts what was not. Dropped
    /// (with its stream gone), the session goes into that cache, so a later
    /// instance of this component sending the same conversation plus a new
    /// turn evaluates only the new turn: what a stateless HTTP handler needs.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Session, SessionOptions};
    /// let model = Model::load("smollm2")?;
    /// let prompt = model.tokenize("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", true, true)?;
    /// let options = SessionOptions { context_length: None, seed: None, overflow: None };
    /// let session = Session::open_cached(&model, options, &prompt)?;
    /// assert_eq!(session.tokens(), prompt);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn open_cached(model: &Model, options: SessionOptions, prompt: &[u32]) -> Result<Self, Error> {
        Ok(Self { raw: raw::Session::open_cached(model.graph(), options, prompt)? })
    }

    /// Keep `note` under `key` with this session's conversation in the
    /// host's prefix cache, for [`cached_note`](Self::cached_note) in a
    /// later instance while the cache holds the conversation (extension
    /// 0.1.5; only for a session from [`open_cached`](Self::open_cached)).
    pub fn keep_note(&self, key: &str, note: &[u8]) -> Result<(), Error> {
        Ok(self.raw.keep_note(key, note)?)
    }

    /// The note this component kept under `key` with a conversation the
    /// prefix cache of `model` still holds (extension 0.1.5).
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Session};
    /// let model = Model::load("smollm2")?;
    /// if let Some(messages) = Session::cached_note(&model, "resp_1")? {
    ///     println!("{} bytes kept with that conversation", messages.len());
    /// }
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn cached_note(model: &Model, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(raw::Session::cached_note(model.graph(), key)?)
    }

    /// Evaluate `text` into the session (special tokens such as `<|im_start|>`
    /// are parsed); returns how many tokens were added.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// let added = session.append("<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")?;
    /// assert_eq!(session.len(), added);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
        let raw = match params.portable() {
            Some(constraint) => self.raw.generate_constrained(params.as_raw(), constraint)?,
            None => self.raw.generate(params.as_raw())?,
        };
        Ok(TokenStream { raw, finish: None })
    }

    /// Evaluate token ids into the session (each is checked against the
    /// vocabulary); returns how many were added.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// let ids = model.tokenize("Hello", false, false)?;
    /// session.append_tokens(&ids)?;
    /// assert_eq!(session.tokens(), ids);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn append_tokens(&self, tokens: &[u32]) -> Result<u32, Error> {
        Ok(self.raw.append_tokens(tokens)?)
    }

    /// Tokens the session holds.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// session.append("Hello")?;
    /// assert!(session.len() > 0);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn len(&self) -> u32 {
        self.raw.len()
    }

    /// Whether the session holds no tokens.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// assert!(session.is_empty());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tokens the session holds.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// session.append("Hello")?;
    /// assert_eq!(session.tokens().len() as u32, session.len());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn tokens(&self) -> Vec<u32> {
        self.raw.tokens()
    }

    /// Most tokens the session may hold.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// assert_eq!(session.context_limit(), model.info()?.max_session_context);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn context_limit(&self) -> u32 {
        self.raw.context_limit()
    }

    /// Tokens that still fit.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// session.append("Hello")?;
    /// assert_eq!(session.remaining(), session.context_limit() - session.len());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// session.append("Hello")?;
    /// session.reset()?;
    /// assert!(session.is_empty());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Model, Session};
    /// # let model = Model::load("smollm2")?;
    /// let bytes = std::fs::read("chat.session").unwrap();
    /// let session = Session::restore(&model, &bytes)?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn restore(model: &Model, snapshot: &[u8]) -> Result<Self, Error> {
        Ok(Self { raw: raw::Session::restore(model.graph(), snapshot)? })
    }

    /// The raw resource.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// let n = session.as_raw().len();
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// # session.append("Hi")?;
    /// let mut stream = session.generate(&wasi_nn_llm::Params::greedy().max_tokens(8))?;
    /// for chunk in &mut stream { print!("{}", chunk?.text); }
    /// let finish = stream.finish().expect("finished");
    /// eprintln!("{:?}, {} tokens", finish.reason, finish.usage.generated_tokens);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn finish(&self) -> Option<&Finish> {
        self.finish.as_ref()
    }

    /// Wait for the next token, then take everything already generated, up
    /// to `max_tokens` tokens, as one chunk: fewer host calls for a guest
    /// that does not need each token as it comes. `None` at the end.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// # session.append("Hi")?;
    /// let mut stream = session.generate(&wasi_nn_llm::Params::greedy())?;
    /// while let Some(chunk) = stream.next_chunk(16) {
    ///     print!("{}", chunk?.text);
    /// }
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// # session.append("Hi")?;
    /// let mut stream = session.generate(&wasi_nn_llm::Params::greedy())?;
    /// let first = stream.next();
    /// stream.cancel(); // the session keeps only the first chunk
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// # session.append("Hi")?;
    /// let mut stream = session.generate(&wasi_nn_llm::Params::greedy())?;
    /// if let Some(chunk) = stream.try_next()? {
    ///     print!("{}", chunk.text);
    /// }
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let session = wasi_nn_llm::Session::open(&model)?;
    /// session.append("The capital of France is")?;
    /// let (text, finish) = session.generate(&wasi_nn_llm::Params::greedy().max_tokens(8))?.collect_text()?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
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
