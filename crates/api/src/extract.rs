//! Request extractors that answer in the API's envelope: JSON bodies with a
//! size cap and unknown fields refused by name, and query strings likewise.
//! axum's own `Json`/`Query` rejections are plain text, hence these.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::{ApiError, MAX_BODY_BYTES};

/// A JSON object body of at most `LIMIT` bytes. An empty body reads as
/// `{}`, so routes whose fields are all optional accept a bare POST.
#[derive(Debug)]
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

/// Reads at most `limit` bytes; more is a 413, not a truncated parse. A
/// body that arrives in one piece, as a small one does, is not copied.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut joined = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest {
            field: None,
            message: format!("could not read the request body: {e}"),
        })?;
        let read = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if read + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            earlier => {
                joined.extend_from_slice(earlier.as_deref().unwrap_or_default());
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// Turns a serde error into a 400 naming the field: the path where
/// deserialization failed, or the field serde names ("unknown field `x`",
/// "missing field `y`").
pub(crate) fn parse_error(path: String, inner: &str) -> ApiError {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| inner.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    // serde_path_to_error already ends the path with an unknown field's
    // name, but not with a missing one's.
    let field = match (named, path.as_str()) {
        (Some(name), "." | "") => Some(name),
        (Some(name), p) if p == name || p.ends_with(&format!(".{name}")) => Some(p.to_owned()),
        (Some(name), p) => Some(format!("{p}.{name}")),
        (None, "." | "") => None,
        (None, p) => Some(p.to_owned()),
    };
    ApiError::BadRequest {
        field,
        message: inner.to_owned(),
    }
}

/// Reads one JSON object and nothing else. serde's derived structs also
/// accept an array of their fields in order, and a deserializer stops at
/// the end of the first value, so both are refused here by name: a client
/// sending either has a bug that a 2xx would hide.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    if let Some(kind) = other_json_value(bytes) {
        return Err(ApiError::BadRequest {
            field: None,
            message: format!(
                "the request body must be a JSON object ({{...}}), not {kind}; \
                 send the fields as an object's members"
            ),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(&mut *de).map_err(|plain| refused::<T>(bytes, &plain))?;
    de.end().map_err(|e| ApiError::BadRequest {
        field: None,
        message: format!(
            "the request body must be one JSON object with nothing after it, but more \
             follows the object at line {} column {}; remove it",
            e.line(),
            e.column()
        ),
    })?;
    Ok(value)
}

/// Why `bytes` is not a `T`, naming the field: parsed again, this time
/// tracking the path, which costs every body that parses if done first.
/// Should the second parse disagree, the first one's error stands.
fn refused<T: DeserializeOwned>(bytes: &[u8], plain: &serde_json::Error) -> ApiError {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Err(e) => parse_error(e.path().to_string(), &e.inner().to_string()),
        Ok(_) => parse_error(String::new(), &plain.to_string()),
    }
}

/// What the body holds when it starts like a JSON value other than an
/// object. Anything else is left to the parser, which says where the JSON
/// goes wrong.
fn other_json_value(bytes: &[u8]) -> Option<&'static str> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &bytes[start..];
    match text[0] {
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b'-' | b'0'..=b'9' => Some("a number"),
        _ if text.starts_with(b"true") || text.starts_with(b"false") => Some("a boolean"),
        _ if text.starts_with(b"null") => Some("null"),
        _ => None,
    }
}

impl<S, T, const LIMIT: usize> FromRequest<S> for JsonBody<T, LIMIT>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body(), LIMIT).await?;
        from_json(&bytes).map(JsonBody)
    }
}

/// A query string; unknown parameters are refused by name.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| parse_error(e.path().to_string(), &e.inner().to_string()))
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        n: u32,
    }

    fn message(bytes: &[u8]) -> String {
        match from_json::<Body>(bytes) {
            Err(ApiError::BadRequest {
                field: None,
                message,
            }) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_object_and_nothing_else() {
        assert!(from_json::<Body>(b" {\"name\": \"a\", \"n\": 1}\r\n").is_ok());
        // serde would read this array as the struct's fields, in order.
        let err = message(br#"["a", 1]"#);
        assert!(
            err.contains("must be a JSON object") && err.contains("not an array"),
            "{err}"
        );
        assert!(message(b"\"x\"").contains("not a string"));
        assert!(message(b"12").contains("not a number"));
        assert!(message(b"false").contains("not a boolean"));
        assert!(message(b" null").contains("not null"));
        // serde stops after the first value and would ignore the rest.
        let err = message(br#"{"name": "a", "n": 1}xx"#);
        assert!(
            err.contains("nothing after it") && err.contains("column 22"),
            "{err}"
        );
        assert!(message(br#"{"name": "a", "n": 1} {}"#).contains("nothing after it"));
        // Not JSON at all: the parser's own words, with the place.
        assert!(message(b"fals").contains("line 1 column"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u32,
    }

    fn field(bytes: &[u8]) -> (Option<String>, String) {
        match from_json::<Outer>(bytes) {
            Err(ApiError::BadRequest { field, message }) => (field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_names_the_field_where_parsing_failed() {
        assert!(from_json::<Outer>(br#"{"items": [{"x": 1}]}"#).is_ok());
        let (at, message) = field(br#"{"items": [{"x": 1}, {"x": "a"}]}"#);
        assert_eq!(at.as_deref(), Some("items[1].x"), "{message}");
        assert!(message.contains("invalid type"), "{message}");
        let (at, _) = field(br#"{"items": [{"x": 1, "y": 2}]}"#);
        assert_eq!(at.as_deref(), Some("items[0].y"));
        let (at, _) = field(br#"{"items": [{}]}"#);
        assert_eq!(at.as_deref(), Some("items[0].x"));
        let (at, _) = field(br#"{}"#);
        assert_eq!(at.as_deref(), Some("items"));
    }

    fn chunked(chunks: &[&'static str]) -> axum::body::Body {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_in_pieces_or_in_one_up_to_its_limit() {
        let one = read_body(chunked(&["{\"a\": 1}"]), 8 + 1).await.unwrap();
        assert_eq!(&one[..], b"{\"a\": 1}");
        let pieces = read_body(chunked(&["{\"a\"", "", ": 1", "}"]), 9)
            .await
            .unwrap();
        assert_eq!(&pieces[..], b"{\"a\": 1}");
        assert!(read_body(chunked(&[]), 9).await.unwrap().is_empty());
        for body in [chunked(&["0123456789"]), chunked(&["01234", "56789"])] {
            assert!(matches!(
                read_body(body, 9).await,
                Err(ApiError::TooLarge(9))
            ));
        }
    }
}
