//! `serve --api-key`: who may call the HTTP guest.
//!
//! A request names its key as OpenAI's clients send it
//! (`Authorization: Bearer KEY`) or as some others do (`x-api-key: KEY`).
//! Keys are kept and compared as BLAKE3 digests: `blake3::Hash` compares in
//! constant time, and a digest's length says nothing of the key's, so
//! neither the bytes nor the length of a key leak through timing. Every
//! configured key is compared, matched or not. A checked key is removed
//! from the request before the guest sees it: the guest has no use for
//! it, and what it never holds it cannot log or leak. Keys are never
//! logged, and none is printed at start-up (only how many there are).

use std::path::Path;

use anyhow::{Context, bail};
use hyper::Method;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderName};

/// The header some clients (Anthropic-style) send the key in.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Paths any client may reach without a key: load balancers' health checks.
const OPEN_PATHS: [&str; 1] = ["/health"];

/// What a browser may `GET` without a key: a page (`/`) and its files
/// (`/ui/…`). A browser loads the page before anyone can type a key into
/// it, and the page then sends the key with every API call. A guest
/// serves only static files there (the OpenAI server's chat page);
/// anything that runs the model stays behind the key.
const OPEN_PAGE: (&str, &str) = ("/", "/ui/");

/// The keys that admit a request; none configured admits every request.
#[derive(Default)]
pub struct ApiKeys(Vec<blake3::Hash>);

/// Why a request was not admitted (each answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It named no key.
    Missing,
    /// It named a key that is not one of the server's.
    Wrong,
}

impl ApiKeys {
    /// Keys from `--api-key` flags and the lines of `--api-key-file`s
    /// (blank lines and `#` comments skipped).
    pub fn new(keys: &[String], files: &[impl AsRef<Path>]) -> anyhow::Result<Self> {
        let mut all: Vec<String> = keys.to_vec();
        for file in files {
            let file = file.as_ref();
            let text =
                std::fs::read_to_string(file).with_context(|| format!("reading the API keys {}", file.display()))?;
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
            let before = all.len();
            all.extend(lines.map(str::to_owned));
            if all.len() == before {
                bail!("{} holds no API key (one a line)", file.display());
            }
        }
        for (i, key) in all.iter().enumerate() {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("API key {} is empty or holds whitespace", i + 1);
            }
        }
        Ok(Self(all.iter().map(|k| blake3::hash(k.as_bytes())).collect()))
    }

    /// How many keys admit requests (0: the server is open to all).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Admit a `method` request to `path` with `headers`, taking its key
    /// out of them; or say why not.
    pub fn admit(&self, method: &Method, path: &str, headers: &mut HeaderMap) -> Result<(), Refusal> {
        let page =
            matches!(*method, Method::GET | Method::HEAD) && (path == OPEN_PAGE.0 || path.starts_with(OPEN_PAGE.1));
        if self.0.is_empty() || OPEN_PATHS.contains(&path) || page {
            return Ok(());
        }
        let bearer = headers.remove(AUTHORIZATION);
        let other = headers.remove(X_API_KEY);
        let presented =
            bearer.as_ref().and_then(|v| bearer_token(v.as_bytes())).or(other.as_ref().map(|v| v.as_bytes()));
        let presented = presented.filter(|k| !k.is_empty()).ok_or(Refusal::Missing)?;
        let digest = blake3::hash(presented);
        // Compare with every key (no early exit), each in constant time.
        let matched = self.0.iter().fold(false, |found, key| found | (*key == digest));
        if matched { Ok(()) } else { Err(Refusal::Wrong) }
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, as RFC 6750 allows).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
}

impl Refusal {
    /// The message of the 401, in OpenAI's words where it has them.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "You didn't provide an API key. You need to provide your API key in an Authorization header \
                 using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            }
            Self::Wrong => "Incorrect API key provided.",
        }
    }

    /// OpenAI's `code` for it.
    pub fn code(self) -> Option<&'static str> {
        match self {
            Self::Missing => None,
            Self::Wrong => Some("invalid_api_key"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn a_listed_key_in_either_header_is_admitted_and_taken_out() {
        let keys = ApiKeys::new(&["sk-one".into(), "sk-two".into()], &[] as &[&Path]).unwrap();
        for mut h in [headers(&[("authorization", "Bearer sk-two")]), headers(&[("x-api-key", "sk-one")])] {
            assert_eq!(keys.admit(&Method::POST, "/v1/models", &mut h), Ok(()));
            assert!(h.get(AUTHORIZATION).is_none() && h.get(X_API_KEY).is_none(), "the guest never sees the key");
        }
        assert_eq!(
            keys.admit(&Method::POST, "/v1/models", &mut headers(&[("authorization", "bearer  sk-one ")])),
            Ok(())
        );
    }

    #[test]
    fn no_key_a_wrong_key_or_another_scheme_is_refused() {
        let keys = ApiKeys::new(&["sk-one".into()], &[] as &[&Path]).unwrap();
        assert_eq!(keys.admit(&Method::POST, "/v1/models", &mut HeaderMap::new()), Err(Refusal::Missing));
        assert_eq!(
            keys.admit(&Method::POST, "/v1/models", &mut headers(&[("authorization", "Bearer ")])),
            Err(Refusal::Missing)
        );
        assert_eq!(
            keys.admit(&Method::POST, "/v1/models", &mut headers(&[("authorization", "Basic sk-one")])),
            Err(Refusal::Missing)
        );
        assert_eq!(
            keys.admit(&Method::POST, "/v1/models", &mut headers(&[("authorization", "Bearer sk-on")])),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            keys.admit(&Method::POST, "/v1/models", &mut headers(&[("x-api-key", "sk-one2")])),
            Err(Refusal::Wrong)
        );
        assert_eq!(keys.admit(&Method::POST, "/health", &mut HeaderMap::new()), Ok(()), "health checks need no key");
    }

    #[test]
    fn a_browser_gets_the_page_and_its_files_but_nothing_else_without_a_key() {
        let keys = ApiKeys::new(&["sk-one".into()], &[] as &[&Path]).unwrap();
        for path in ["/", "/ui/chat.js", "/ui/vendor/purify.min.js"] {
            assert_eq!(keys.admit(&Method::GET, path, &mut HeaderMap::new()), Ok(()), "{path}");
        }
        assert_eq!(keys.admit(&Method::POST, "/", &mut HeaderMap::new()), Err(Refusal::Missing), "only reading");
        for path in ["/v1/models", "/uix", "/v1/ui/x"] {
            assert_eq!(keys.admit(&Method::GET, path, &mut HeaderMap::new()), Err(Refusal::Missing), "{path}");
        }
    }

    #[test]
    fn no_keys_admit_everyone_and_a_key_file_is_read_line_by_line() {
        assert_eq!(ApiKeys::default().admit(&Method::POST, "/v1/models", &mut HeaderMap::new()), Ok(()));
        let file = std::env::temp_dir().join(format!("wasi-nn-llm-keys-{}", std::process::id()));
        std::fs::write(&file, "# operators\nsk-a\n\n  sk-b  \n").unwrap();
        let keys = ApiKeys::new(&[], &[&file]).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.admit(&Method::POST, "/v1/models", &mut headers(&[("authorization", "Bearer sk-b")])), Ok(()));
        std::fs::write(&file, "# none\n").unwrap();
        assert!(ApiKeys::new(&[], &[&file]).is_err());
        std::fs::remove_file(file).ok();
        assert!(ApiKeys::new(&["two words".into()], &[] as &[&Path]).is_err());
    }
}
