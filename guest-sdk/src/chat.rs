//! A multi-turn chat on one session that only ever sends the new turn.
//!
//! Each turn is rendered with the model's own template (host-side); what the
//! session already holds is a prefix of that rendering, because a session
//! holds exactly the text its guest appended and was streamed (the
//! end-of-turn token is not kept; the template's closing tag re-adds it). So
//! only the difference is appended, and only it is evaluated.

use crate::{Chunk, Error, Finish, Message, Model, Params, Session, TokenStream};

/// A conversation with a model.
pub struct Chat<'m> {
    model: &'m Model,
    session: Session,
    messages: Vec<Message>,
    /// The text the session holds.
    transcript: String,
}

impl<'m> Chat<'m> {
    /// A new chat in a fresh session.
    pub fn new(model: &'m Model) -> Result<Self, Error> {
        Ok(Self::with_session(model, Session::open(model)?))
    }

    /// A new chat in an empty session opened by the caller (for options).
    pub fn with_session(model: &'m Model, session: Session) -> Self {
        Self { model, session, messages: Vec::new(), transcript: String::new() }
    }

    /// Add a system message; it is sent with the next turn.
    pub fn system(&mut self, content: &str) {
        self.messages.push(Message { role: "system".into(), content: content.into() });
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Send a user turn and start the assistant's reply. The reply joins the
    /// history when the returned [`Reply`] is dropped, with whatever was read.
    pub fn send(&mut self, user: &str, params: &Params) -> Result<Reply<'_, 'm>, Error> {
        self.messages.push(Message { role: "user".into(), content: user.into() });
        let rendered = self.model.apply_chat_template(&self.messages, true).and_then(|full| {
            let delta = full.strip_prefix(&self.transcript).ok_or(Error::TemplateNotIncremental)?.to_owned();
            Ok((full, delta))
        });
        let (full, delta) = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        if let Err(e) = self.session.append(&delta) {
            self.messages.pop();
            return Err(e);
        }
        self.transcript = full;
        let stream = self.session.generate(params)?;
        Ok(Reply { chat: self, stream, text: String::new() })
    }
}

/// The assistant's reply, streaming; iterate it for [`Chunk`]s.
pub struct Reply<'c, 'm> {
    chat: &'c mut Chat<'m>,
    stream: TokenStream,
    text: String,
}

impl Reply<'_, '_> {
    /// How the reply ended, once the iterator is exhausted.
    pub fn finish(&self) -> Option<&Finish> {
        self.stream.finish()
    }

    /// The reply text read so far.
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
