//! Webhook endpoint URLs.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("url is not an absolute URL: {0}")]
    Invalid(String),
    #[error("url scheme must be http or https, not {0:?}")]
    Scheme(String),
    #[error("url must use https (set delivery.require_https=false to allow plain http)")]
    HttpsRequired,
    #[error("url has no host")]
    NoHost,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error("url is {0} characters long; at most 2048 are allowed")]
    TooLong(usize),
}

/// An absolute http(s) URL without credentials. Whether plain http and
/// private addresses are acceptable is deployment policy, checked separately
/// ([`WebhookUrl::check_https`]) and at connect time by the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(::url::Url);

impl WebhookUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(value: &str) -> Result<Self, UrlError> {
        if value.len() > Self::MAX_LEN {
            return Err(UrlError::TooLong(value.len()));
        }
        let url = ::url::Url::parse(value).map_err(|e| UrlError::Invalid(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(UrlError::Scheme(other.to_owned())),
        }
        if url.host().is_none() {
            return Err(UrlError::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        Ok(Self(url))
    }

    pub fn check_https(&self, require_https: bool) -> Result<(), UrlError> {
        if require_https && self.0.scheme() != "https" {
            return Err(UrlError::HttpsRequired);
        }
        Ok(())
    }

    pub fn as_url(&self) -> &::url::Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = UrlError;
    fn try_from(value: String) -> Result<Self, UrlError> {
        Self::parse(&value)
    }
}

impl From<WebhookUrl> for String {
    fn from(url: WebhookUrl) -> String {
        url.0.into()
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https() {
        assert!(WebhookUrl::parse("https://hooks.example.com/a?b=c").is_ok());
        let plain = WebhookUrl::parse("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(plain.check_https(true), Err(UrlError::HttpsRequired));
        assert_eq!(plain.check_https(false), Ok(()));
    }

    #[test]
    fn refuses_what_cannot_be_posted_to() {
        assert!(matches!(
            WebhookUrl::parse("not a url"),
            Err(UrlError::Invalid(_))
        ));
        assert_eq!(
            WebhookUrl::parse("ftp://example.com/"),
            Err(UrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            WebhookUrl::parse("https://user:pw@example.com/"),
            Err(UrlError::Credentials)
        );
        let long = format!("https://example.com/{}", "a".repeat(3000));
        assert!(matches!(
            WebhookUrl::parse(&long),
            Err(UrlError::TooLong(_))
        ));
    }
}
