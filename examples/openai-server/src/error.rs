//! Errors in OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, with the status its clients expect: 400 for the request's
//! fault, 403 for the policy, 404 for an unknown model or path, 429 for a
//! quota, 500 only when the engine fails.

use http::{Response, StatusCode};
use serde_json::json;
use wasi_nn_llm::Error;
use wasi_nn_llm::raw::wasi::nn::errors::ErrorCode;
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::Error as LlmError;

use crate::Reply;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 for a malformed or out-of-range request field.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// A 404 for a path this server does not serve.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("no such endpoint: {method} {path}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// A 404 for a model this server does not have.
    pub fn unknown_model(name: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("the model {name:?} does not exist (GET /v1/models lists those this server has)"),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        }
    }

    /// The error from loading model `name`, or from using it.
    pub fn from_model(name: &str, error: Error) -> Self {
        match &error {
            Error::Nn { code: ErrorCode::NotFound, .. } => Self::unknown_model(name),
            _ => error.into(),
        }
    }

    /// The same error, blamed on request field `param` where it names one
    /// (the extension's error cannot know which field held the input).
    pub fn at(mut self, param: &'static str) -> Self {
        if self.param.is_some() {
            self.param = Some(param);
        }
        self
    }

    /// The JSON object, for a response body or an SSE `data:` line.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }

    /// The error as a response.
    pub fn response(&self) -> Response<Reply> {
        crate::json_reply(self.status, &self.body())
    }
}

impl From<Error> for ApiError {
    /// The extension's typed errors, each to its status.
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let (status, kind, param, code) = match &error {
            Error::Llm(LlmError::PromptTooLong(_) | LlmError::ContextFull(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("messages"), Some("context_length_exceeded"))
            }
            Error::Llm(LlmError::InvalidGrammar(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("response_format"), Some("invalid_schema"))
            }
            Error::Llm(LlmError::InvalidToken(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", Some("logit_bias"), Some("invalid_token"))
            }
            Error::Llm(LlmError::InvalidArgument(_) | LlmError::Unsupported(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None, None)
            }
            Error::Llm(LlmError::NotPermitted(_)) => (StatusCode::FORBIDDEN, "permission_error", Some("model"), None),
            Error::Llm(LlmError::LimitExceeded(_)) => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None, Some("rate_limit_exceeded"))
            }
            Error::Llm(LlmError::SessionBusy) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None, None),
            Error::TemplateNotIncremental => (StatusCode::BAD_REQUEST, "invalid_request_error", Some("messages"), None),
            Error::Nn { code: ErrorCode::InvalidArgument, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None, None)
            }
            Error::Nn { code: ErrorCode::NotFound, .. } => {
                (StatusCode::NOT_FOUND, "invalid_request_error", Some("model"), Some("model_not_found"))
            }
            Error::Llm(LlmError::UnsupportedGraph(_) | LlmError::EngineFailure(_))
            | Error::Llm(LlmError::InvalidSnapshot(_))
            | Error::Nn { .. }
            | Error::NotSavedChat
            | Error::UnexpectedModel { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, None),
        };
        Self { status, message, kind, param, code }
    }
}
