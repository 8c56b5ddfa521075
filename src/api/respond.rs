//! Building `/v1` answers: JSON bodies, error bodies, and reading a request
//! body into a type with an error that names the field.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use lbmesh_api::ErrorBody;
use serde::Serialize;

/// An answer's body: whole (every route), or streamed as it is made (a
/// followed log), whose error breaks the chunked answer off so the client
/// sees it end early rather than cleanly.
pub type ApiBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub type ApiResponse = Response<ApiBody>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn json_response(status: StatusCode, value: &impl Serialize) -> ApiResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An [`ErrorBody`] answer.
pub fn error(status: StatusCode, field: &str, reason: impl Into<String>) -> ApiResponse {
    json_response(status, &ErrorBody::new(field, reason))
}

/// Parses a JSON body; the error names the field path.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Box<ApiResponse>> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            "body".to_owned()
        } else {
            field
        };
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &field,
            e.into_inner().to_string(),
        ))
    })
}
