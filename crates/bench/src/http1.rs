//! A lean HTTP/1.1 client for the ingest scenarios: keep-alive connections
//! that send a prepared POST and read its answer, and nothing else. The
//! load generator shares the machine's two cores with what it measures, so
//! it should cost about what a tool such as `wrk` costs, not a full client's
//! header maps, pools and body streams per request.
//!
//! It speaks only what courier answers: a status line, headers with a
//! `Content-Length`, and that many bytes of body. Anything else (chunked
//! bodies, a closed connection) is an error the scenario reports.

use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head accepted before giving up on the answer.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// One keep-alive connection.
struct Connection {
    stream: TcpStream,
    /// What has been read and not yet consumed.
    read: Vec<u8>,
    /// The request being written.
    write: Vec<u8>,
}

/// An answer: its status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Connections to one server, opened when needed and kept between
/// requests.
pub struct Client {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<Connection>>,
}

impl Client {
    /// A client of `base` (`http://127.0.0.1:<port>`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let host = base
            .strip_prefix("http://")
            .with_context(|| format!("{base:?} is not an http:// address"))?
            .trim_end_matches('/')
            .to_owned();
        let addr = host
            .parse()
            .with_context(|| format!("{host:?} is not an IP address and port"))?;
        Ok(Self {
            addr,
            host,
            idle: Mutex::default(),
        })
    }

    /// POSTs `body` (JSON) to `path` with `authorization`, on an idle
    /// connection or a new one, and reads the whole answer. A connection
    /// that fails is dropped; the next request opens another.
    pub async fn post(
        &self,
        path: &str,
        authorization: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("could not connect to {}", self.addr))?;
                stream.set_nodelay(true)?;
                Connection {
                    stream,
                    read: Vec::with_capacity(4096),
                    write: Vec::with_capacity(4096),
                }
            }
        };
        let response = connection
            .exchange(&self.host, path, authorization, body)
            .await?;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(connection);
        Ok(response)
    }
}

impl Connection {
    async fn exchange(
        &mut self,
        host: &str,
        path: &str,
        authorization: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        self.write.clear();
        self.write.extend_from_slice(b"POST ");
        self.write.extend_from_slice(path.as_bytes());
        self.write.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.write.extend_from_slice(host.as_bytes());
        self.write.extend_from_slice(b"\r\nauthorization: ");
        self.write.extend_from_slice(authorization.as_bytes());
        self.write
            .extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        self.write
            .extend_from_slice(body.len().to_string().as_bytes());
        self.write.extend_from_slice(b"\r\n\r\n");
        self.write.extend_from_slice(body);
        self.stream.write_all(&self.write).await?;

        let head_end = loop {
            if let Some(at) = find(&self.read, b"\r\n\r\n") {
                break at + 4;
            }
            if self.read.len() > MAX_HEAD_BYTES {
                bail!("the answer's head is longer than {MAX_HEAD_BYTES} bytes");
            }
            self.fill().await?;
        };
        let (status, length) = parse_head(&self.read[..head_end])?;
        while self.read.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.read[head_end..head_end + length].to_vec();
        self.read.drain(..head_end + length);
        Ok(Response { status, body })
    }

    /// Reads what the server sent next; its closing the connection is an
    /// error, as no answer is complete without the bytes awaited.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.read.reserve(4096);
        if self.stream.read_buf(&mut self.read).await? == 0 {
            bail!("the server closed the connection before answering");
        }
        Ok(())
    }
}

/// The status and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> anyhow::Result<(u16, usize)> {
    let text = std::str::from_utf8(head).context("the answer's head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse()
                    .context("a Content-Length that is not a number")?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!(
                "the answer has Transfer-Encoding {value:?}; only Content-Length bodies are read"
            );
        }
    }
    Ok((status, length.unwrap_or(0)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_and_length_of_a_head() {
        let head = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 17\r\n\r\n";
        assert_eq!(parse_head(head).unwrap(), (202, 17));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
        assert!(parse_head(b"HTTP/1.0 200 OK\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn posts_on_kept_connections() {
        let app = axum::Router::new().route(
            "/echo",
            axum::routing::post(
                |body: String| async move { (axum::http::StatusCode::ACCEPTED, body) },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new(&base).unwrap();
        for n in 0..3 {
            let body = format!("{{\"n\":{n}}}");
            let response = client
                .post("/echo", "Bearer x", body.as_bytes())
                .await
                .unwrap();
            assert_eq!(response.status, 202);
            assert_eq!(response.body, body.as_bytes());
        }
        assert_eq!(
            client.idle.lock().unwrap().len(),
            1,
            "one connection, kept alive"
        );
    }
}
