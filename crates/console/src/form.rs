//! Posted forms (`application/x-www-form-urlencoded`), read as name/value
//! pairs: checkboxes repeat a name once per ticked box, which serde's form
//! decoding does not keep.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};

use crate::PageError;

/// Forms are small: a webhook's fields and a token. (The router's body
/// limit is this too.)
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
pub(crate) struct FormData {
    pairs: Vec<(String, String)>,
}

impl FormData {
    pub(crate) fn parse(body: &[u8]) -> Self {
        Self {
            pairs: form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed; `None` when absent or blank.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every value of `name`, in the order sent.
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A checkbox: sent (with any value) when ticked.
    pub(crate) fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, PageError> {
        let form_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return Err(PageError::BadRequest(
                "expected a form (application/x-www-form-urlencoded)",
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|_| PageError::BadRequest("the form is too large or was cut off"))?;
        Ok(Self::parse(&body))
    }
}

/// A list typed into one box: one entry per line or comma, blanks dropped.
pub(crate) fn split_list(text: &str) -> Vec<String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_keep_every_value() {
        let form =
            FormData::parse(b"events=order.created&events=order.updated&name=+ERP+&active=on");
        assert_eq!(form.all("events"), ["order.created", "order.updated"]);
        assert_eq!(form.text("name"), Some("ERP"));
        assert!(form.checked("active"));
        assert!(!form.checked("missing"));
        assert_eq!(form.text("missing"), None);
    }

    #[test]
    fn lists_split_on_commas_and_lines() {
        assert_eq!(
            split_list(" amazon, ebay\nshopify\n\n,"),
            ["amazon", "ebay", "shopify"]
        );
        assert!(split_list("  ").is_empty());
    }
}
