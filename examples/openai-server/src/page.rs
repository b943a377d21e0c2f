//! The chat page at `GET /`: a browser's way in (`ui/`, README: Chat in the
//! browser). Its files are embedded in the component, so the page works
//! where the host refuses every outgoing request, and a server stays one
//! file to deploy. The page talks to this server's own
//! `/v1/chat/completions` and `/v1/models`, nothing else.

use http::{HeaderValue, Response};

use crate::Reply;

/// What the page may load and run: its own files, requests to this server,
/// nothing inline and nothing from elsewhere. Model output that got past
/// the page's escaping and sanitising still could not run a script or
/// fetch a tracking image.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's files: path, media type, contents.
const FILES: [(&str, &str, &[u8]); 5] = [
    ("/", "text/html; charset=utf-8", include_bytes!("../ui/index.html")),
    ("/ui/chat.js", "text/javascript; charset=utf-8", include_bytes!("../ui/chat.js")),
    ("/ui/chat.css", "text/css; charset=utf-8", include_bytes!("../ui/chat.css")),
    ("/ui/vendor/marked.umd.js", "text/javascript; charset=utf-8", include_bytes!("../ui/vendor/marked.umd.js")),
    ("/ui/vendor/purify.min.js", "text/javascript; charset=utf-8", include_bytes!("../ui/vendor/purify.min.js")),
];

/// The page's file at `path` (the router's, trailing `/` trimmed: `""` is
/// the page), if it is one.
pub fn file(path: &str) -> Option<Response<Reply>> {
    let path = if path.is_empty() { "/" } else { path };
    let &(_, media_type, contents) = FILES.iter().find(|(p, ..)| *p == path)?;
    let mut response = Response::new(Reply::Full(contents.to_vec()));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(media_type));
    headers.insert("content-security-policy", HeaderValue::from_static(POLICY));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Small, and replaced with the component: always asked for again.
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    Some(response)
}
