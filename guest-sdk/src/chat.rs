//! A multi-turn chat on one session that only ever sends the new turn.
//!
//! Each turn is rendered with the model's own template (host-side); what the
//! session already holds is a prefix of that rendering, because a session
//! holds exactly the text its guest appended and was streamed (the
//! end-of-turn token is not kept; the template's closing tag re-adds it). So
//! only the difference is appended, and only it is evaluated.

use crate::raw::wasi_nn_llm::llm::types::{Error as LlmError, SnapshotError};
use crate::{Chunk, Error, Finish, Message, Model, Params, Session, TokenStream};

/// What to append to a session holding `transcript` so that it holds the
/// conversation `rendered` (the template's rendering of all messages, the
/// new turn included), or `None` if the template rewrote earlier turns.
///
/// Usually `rendered` simply extends `transcript`. Some templates trim
/// message contents (gemma's does), so a reply the model ended with
/// whitespace re-renders without it; the session keeps that whitespace and
/// the rest of the rendering is appended after it.
///
/// ```
/// use wasi_nn_llm::turn_delta;
/// let held = "<start_of_turn>model\nHello!\n";
/// let rendered = "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nHi";
/// assert_eq!(turn_delta(held, rendered), Some("<end_of_turn>\n<start_of_turn>user\nHi"));
/// assert_eq!(turn_delta("abc", "abd"), None);
/// ```
pub fn turn_delta<'r>(transcript: &str, rendered: &'r str) -> Option<&'r str> {
    if let Some(delta) = rendered.strip_prefix(transcript) {
        return Some(delta);
    }
    let common: usize =
        transcript.chars().zip(rendered.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a.len_utf8()).sum();
    transcript[common..].chars().all(char::is_whitespace).then(|| &rendered[common..])
}

/// Marks a saved chat (version 1); the session snapshot follows the messages.
const CHAT_MAGIC: &[u8; 8] = b"WNLLMCH1";

/// A conversation with a model.
pub struct Chat<'m> {
    model: &'m Model,
    session: Session,
    messages: Vec<Message>,
    /// The text the session holds.
    transcript: String,
    /// Where each turn started, for [`Chat::undo`].
    turns: Vec<TurnStart>,
}

/// The state before a turn: what `undo` returns to.
#[derive(Clone)]
struct TurnStart {
    messages: usize,
    transcript: String,
    session_len: u32,
}

impl<'m> Chat<'m> {
    /// A new chat in a fresh session.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Chat, Model};
    /// let model = Model::load("smollm2")?;
    /// let chat = Chat::new(&model)?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn new(model: &'m Model) -> Result<Self, Error> {
        Ok(Self::with_session(model, Session::open(model)?))
    }

    /// A new chat in an empty session opened by the caller (for options).
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Chat, Model, Session, SessionOptions};
    /// let model = Model::load("smollm2")?;
    /// let session = Session::open_with(&model, SessionOptions { context_length: Some(2048), seed: None, overflow: None })?;
    /// let chat = Chat::with_session(&model, session);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn with_session(model: &'m Model, session: Session) -> Self {
        Self { model, session, messages: Vec::new(), transcript: String::new(), turns: Vec::new() }
    }

    /// Add a system message; it is sent with the next turn.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// chat.system("You answer in one sentence.");
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn system(&mut self, content: &str) {
        self.push(Message { role: "system".into(), content: content.into() });
    }

    /// Add any message to the history without generating (to seed a chat
    /// with an earlier conversation); it is sent with the next turn.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// use wasi_nn_llm::Message;
    /// let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// chat.push(Message { role: "user".into(), content: "Hi".into() });
    /// chat.push(Message { role: "assistant".into(), content: "Hello!".into() });
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn push(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// An independent copy of the conversation: the session is forked in the
    /// host, so the shared history is not evaluated again.
    ///
    /// ```no_run
    /// # use wasi_nn_llm::{Chat, Model, Params};
    /// let model = Model::load("smollm2")?;
    /// let mut chat = Chat::new(&model)?;
    /// drop(chat.send("Suggest a name for a cat.", &Params::greedy())?);
    /// let mut other = chat.fork()?;
    /// drop(other.send("Now one for a dog.", &Params::greedy())?);
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn fork(&self) -> Result<Chat<'m>, Error> {
        Ok(Chat {
            model: self.model,
            session: self.session.fork()?,
            messages: self.messages.clone(),
            transcript: self.transcript.clone(),
            turns: self.turns.clone(),
        })
    }

    /// Whether [`undo`](Self::undo) has an exchange to forget (a restored
    /// chat starts with none).
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let chat = wasi_nn_llm::Chat::new(&model)?;
    /// assert!(!chat.can_undo());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn can_undo(&self) -> bool {
        !self.turns.is_empty()
    }

    /// Forget the last exchange (the last user turn and the reply to it):
    /// the session is rewound to exactly where it was before that turn.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// drop(chat.send("Tell me a joke.", &wasi_nn_llm::Params::greedy())?);
    /// chat.undo()?; // as if it was never asked
    /// assert!(chat.messages().is_empty());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn undo(&mut self) -> Result<(), Error> {
        let Some(turn) = self.turns.last() else { return Ok(()) };
        self.session.rewind(self.session.len().saturating_sub(turn.session_len))?;
        let turn = self.turns.pop().expect("checked above");
        self.messages.truncate(turn.messages);
        self.transcript = turn.transcript;
        Ok(())
    }

    /// The conversation (messages and session) as bytes, for
    /// [`Chat::restore`] in this or a later host process.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let chat = wasi_nn_llm::Chat::new(&model)?;
    /// std::fs::write("chat.saved", chat.save()?).unwrap();
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn save(&self) -> Result<Vec<u8>, Error> {
        let mut out = CHAT_MAGIC.to_vec();
        out.extend_from_slice(&(self.messages.len() as u32).to_le_bytes());
        let mut put = |bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        for m in &self.messages {
            put(m.role.as_bytes());
            put(m.content.as_bytes());
        }
        put(self.transcript.as_bytes());
        out.extend_from_slice(&self.session.save()?);
        Ok(out)
    }

    /// A chat saved by [`Chat::save`]; the session part is checked by the
    /// host (model, integrity), the rest here.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let chat = wasi_nn_llm::Chat::restore(&model, &std::fs::read("chat.saved").unwrap())?;
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn restore(model: &'m Model, bytes: &[u8]) -> Result<Self, Error> {
        let corrupted = || Error::Llm(LlmError::InvalidSnapshot(SnapshotError::Corrupted));
        let rest = bytes.strip_prefix(CHAT_MAGIC.as_slice()).ok_or(Error::NotSavedChat)?;
        let (count, mut r) = rest.split_first_chunk::<4>().ok_or_else(corrupted)?;
        let count = u32::from_le_bytes(*count);
        let mut take = || -> Result<String, Error> {
            let (len, tail) = r.split_first_chunk::<4>().ok_or_else(corrupted)?;
            let len = u32::from_le_bytes(*len) as usize;
            let field = tail.get(..len).ok_or_else(corrupted)?;
            r = &tail[len..];
            String::from_utf8(field.to_vec()).map_err(|_| corrupted())
        };
        let mut messages = Vec::new();
        for _ in 0..count {
            messages.push(Message { role: take()?, content: take()? });
        }
        let transcript = take()?;
        let session = Session::restore(model, r)?;
        Ok(Self { model, session, messages, transcript, turns: Vec::new() })
    }

    /// The messages so far.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let chat = wasi_nn_llm::Chat::new(&model)?;
    /// for m in chat.messages() {
    ///     println!("{}: {}", m.role, m.content);
    /// }
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The session the chat runs in.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let chat = wasi_nn_llm::Chat::new(&model)?;
    /// eprintln!("{} tokens in the KV cache", chat.session().len());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Send a user turn and start the assistant's reply. The reply joins the
    /// history when the returned [`Reply`] is dropped, with whatever was read.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// let mut reply = chat.send("Hello!", &wasi_nn_llm::Params::greedy().max_tokens(64))?;
    /// for chunk in &mut reply {
    ///     print!("{}", chunk?.text);
    /// }
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn send(&mut self, user: &str, params: &Params) -> Result<Reply<'_, 'm>, Error> {
        let start = TurnStart {
            messages: self.messages.len(),
            transcript: self.transcript.clone(),
            session_len: self.session.len(),
        };
        self.messages.push(Message { role: "user".into(), content: user.into() });
        let rendered = self.model.render(&self.messages, true).and_then(|full| {
            let delta = turn_delta(&self.transcript, &full).ok_or(Error::TemplateNotIncremental)?.to_owned();
            Ok((full, delta))
        });
        let (full, delta) = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        let appended = match self.session.append(&delta) {
            Ok(n) => n,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        self.transcript = full;
        self.turns.push(start);
        let stream = self.session.generate(params)?;
        Ok(Reply { chat: self, stream, text: String::new(), appended })
    }
}

/// The assistant's reply, streaming; iterate it for [`Chunk`]s.
pub struct Reply<'c, 'm> {
    chat: &'c mut Chat<'m>,
    stream: TokenStream,
    text: String,
    appended: u32,
}

impl Reply<'_, '_> {
    /// Tokens this turn added before generating (the templated user turn).
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// let reply = chat.send("Hello!", &wasi_nn_llm::Params::greedy())?;
    /// eprintln!("this turn evaluated {} new tokens", reply.appended());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn appended(&self) -> u32 {
        self.appended
    }

    /// How the reply ended, once the iterator is exhausted.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// let mut reply = chat.send("Hello!", &wasi_nn_llm::Params::greedy())?;
    /// for chunk in &mut reply { chunk?; }
    /// eprintln!("{:?}", reply.finish().map(|f| &f.reason));
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn finish(&self) -> Option<&Finish> {
        self.stream.finish()
    }

    /// The reply text read so far.
    ///
    /// ```no_run
    /// # let model = wasi_nn_llm::Model::load("smollm2")?;
    /// # let mut chat = wasi_nn_llm::Chat::new(&model)?;
    /// let mut reply = chat.send("Hello!", &wasi_nn_llm::Params::greedy())?;
    /// for chunk in &mut reply { chunk?; }
    /// println!("{}", reply.text());
    /// # Ok::<(), wasi_nn_llm::Error>(())
    /// ```
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl Iterator for Reply<'_, '_> {
    type Item = Result<Chunk, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.stream.next();
        if let Some(Ok(chunk)) = &item {
            self.text.push_str(&chunk.text);
        }
        item
    }
}

impl Drop for Reply<'_, '_> {
    fn drop(&mut self) {
        self.chat.transcript.push_str(&self.text);
        let content = std::mem::take(&mut self.text);
        self.chat.messages.push(Message { role: "assistant".into(), content });
    }
}
