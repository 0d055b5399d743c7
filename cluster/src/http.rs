//! The smallest HTTP/1.1 client etcd's JSON gateway needs: `POST` a JSON body over plain TCP,
//! read a `Content-Length` or chunked reply, or stream a chunked reply line by line (a watch).
//!
//! Hand-written rather than taken from a crate because every read here must have a deadline
//! that the caller picks per call (a watch waits for its next event as long as the agent's loop
//! allows, a campaign's txn a few hundred milliseconds), and a watch stream must be closable
//! from another thread (`shutdown(2)` on its socket). TLS is out of scope: the cluster's etcd is
//! reached over a private network; `https://` endpoints are refused with a clear error.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The longest reply header section or body accepted: a range over a session's keys is small.
const MAX_BODY: usize = 16 << 20;
/// The longest header line.
const MAX_LINE: usize = 16 << 10;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The endpoint is not `http://HOST:PORT`.
    #[error("etcd endpoint {endpoint:?} is not of the form http://HOST:PORT ({why})")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
    /// The deadline passed.
    #[error("{endpoint}: no answer within the deadline")]
    Timeout {
        /// The endpoint.
        endpoint: String,
    },
    /// The connection failed or broke.
    #[error("{endpoint}: {source}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// The reply is not HTTP/1.1 as expected.
    #[error("{endpoint}: malformed reply: {why}")]
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        why: String,
    },
}

impl HttpError {
    /// Whether another endpoint (or a fresh connection) might do better.
    pub fn is_connection(&self) -> bool {
        matches!(self, HttpError::Io { .. } | HttpError::Timeout { .. })
    }
}

/// An `http://HOST:PORT` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT`, as given.
    pub authority: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT` (a trailing `/` is allowed).
    pub fn parse(s: &str) -> Result<Self, HttpError> {
        let bad = |why: &str| HttpError::BadEndpoint {
            endpoint: s.to_owned(),
            why: why.to_owned(),
        };
        let rest = if let Some(rest) = s.strip_prefix("http://") {
            rest
        } else if s.starts_with("https://") {
            return Err(bad("TLS is not supported; use http://"));
        } else {
            return Err(bad("it must start with http://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected HOST:PORT after http://"));
        }
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(bad("expected HOST:PORT with a port number")),
        }
        Ok(Self {
            authority: authority.to_owned(),
        })
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>, HttpError> {
        self.authority
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|source| HttpError::Io {
                endpoint: self.to_string(),
                source,
            })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// A kept-alive connection to one endpoint.
#[derive(Debug)]
pub struct Conn {
    endpoint: Endpoint,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `endpoint` before `deadline`.
    pub fn connect(endpoint: &Endpoint, deadline: Instant) -> Result<Self, HttpError> {
        let mut last = None;
        for addr in endpoint.addrs()? {
            let left = left(endpoint, deadline)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    // Requests are small and answered at once: no Nagle delay.
                    stream.set_nodelay(true).map_err(|e| io_err(endpoint, e))?;
                    return Ok(Self {
                        endpoint: endpoint.clone(),
                        reader: BufReader::new(stream),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if is_timeout(&e) => HttpError::Timeout {
                endpoint: endpoint.to_string(),
            },
            Some(source) => HttpError::Io {
                endpoint: endpoint.to_string(),
                source,
            },
            None => HttpError::BadEndpoint {
                endpoint: endpoint.to_string(),
                why: "the host name resolves to no address".to_owned(),
            },
        })
    }

    /// The endpoint this connection reaches.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `POST path` with a JSON `body`; the status code and the whole reply body.
    pub fn post(
        &mut self,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        self.send(path, body, deadline)?;
        let head = self.read_head(deadline)?;
        let body = if head.chunked {
            let mut out = Vec::new();
            while let Some(chunk) = self.read_chunk(deadline)? {
                out.extend_from_slice(&chunk);
                if out.len() > MAX_BODY {
                    return Err(self.malformed("reply body too large"));
                }
            }
            out
        } else {
            let len = head
                .content_length
                .ok_or_else(|| self.malformed("reply has neither a length nor chunks"))?;
            if len > MAX_BODY {
                return Err(self.malformed("reply body too large"));
            }
            let mut out = vec![0; len];
            self.read_exact(&mut out, deadline)?;
            out
        };
        Ok((head.status, body))
    }

    /// `POST path` and keep reading the reply as a stream of newline-separated messages.
    pub fn post_stream(
        mut self,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Stream, HttpError> {
        self.send(path, body, deadline)?;
        let head = self.read_head(deadline)?;
        if head.status != 200 {
            return Err(self.malformed(&format!("the stream was refused with {}", head.status)));
        }
        if !head.chunked {
            return Err(self.malformed("a stream must be chunked"));
        }
        Ok(Stream {
            conn: self,
            pending: Vec::new(),
            ended: false,
        })
    }

    fn send(&mut self, path: &str, body: &[u8], deadline: Instant) -> Result<(), HttpError> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.endpoint.authority,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let left = left(&self.endpoint, deadline)?;
        let stream = self.reader.get_mut();
        stream
            .set_write_timeout(Some(left))
            .map_err(|e| io_err(&self.endpoint, e))?;
        stream
            .write_all(&req)
            .map_err(|e| io_or_timeout(&self.endpoint, e))
    }

    fn set_deadline(&mut self, deadline: Instant) -> Result<(), HttpError> {
        let left = left(&self.endpoint, deadline)?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| io_err(&self.endpoint, e))
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String, HttpError> {
        let mut line = Vec::new();
        loop {
            self.set_deadline(deadline)?;
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_or_timeout(&self.endpoint, e)),
            };
            if buf.is_empty() {
                return Err(HttpError::Io {
                    endpoint: self.endpoint.to_string(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if line.len() > MAX_LINE {
                return Err(self.malformed("header line too long"));
            }
            if done {
                let text =
                    String::from_utf8(line).map_err(|_| self.malformed("non-UTF-8 header"))?;
                return Ok(text.trim_end_matches(['\r', '\n']).to_owned());
            }
        }
    }

    fn read_exact(&mut self, out: &mut [u8], deadline: Instant) -> Result<(), HttpError> {
        let mut done = 0;
        while done < out.len() {
            self.set_deadline(deadline)?;
            match self.reader.read(&mut out[done..]) {
                Ok(0) => {
                    return Err(HttpError::Io {
                        endpoint: self.endpoint.to_string(),
                        source: io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_or_timeout(&self.endpoint, e)),
            }
        }
        Ok(())
    }

    fn read_head(&mut self, deadline: Instant) -> Result<Head, HttpError> {
        let status_line = self.read_line(deadline)?;
        let mut parts = status_line.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(self.malformed(&format!("status line {status_line:?}")));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(self.malformed(&format!("status line {status_line:?}")));
        }
        let status = code
            .parse()
            .map_err(|_| self.malformed(&format!("status line {status_line:?}")))?;
        let mut head = Head {
            status,
            content_length: None,
            chunked: false,
        };
        loop {
            let line = self.read_line(deadline)?;
            if line.is_empty() {
                return Ok(head);
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(self.malformed(&format!("header {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| self.malformed(&format!("Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }

    /// The next chunk's bytes; `None` after the last (empty) chunk.
    fn read_chunk(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, HttpError> {
        let size_line = self.read_line(deadline)?;
        let hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| self.malformed(&format!("chunk size {size_line:?}")))?;
        if size > MAX_BODY {
            return Err(self.malformed("chunk too large"));
        }
        if size == 0 {
            // Trailers, then the blank line.
            while !self.read_line(deadline)?.is_empty() {}
            return Ok(None);
        }
        let mut chunk = vec![0; size];
        self.read_exact(&mut chunk, deadline)?;
        let mut crlf = [0; 2];
        self.read_exact(&mut crlf, deadline)?;
        if crlf != *b"\r\n" {
            return Err(self.malformed("chunk not followed by CRLF"));
        }
        Ok(Some(chunk))
    }

    fn malformed(&self, why: &str) -> HttpError {
        HttpError::Malformed {
            endpoint: self.endpoint.to_string(),
            why: why.to_owned(),
        }
    }
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

/// A streamed reply: newline-separated messages.
#[derive(Debug)]
pub struct Stream {
    conn: Conn,
    pending: Vec<u8>,
    ended: bool,
}

impl Stream {
    /// The next message, waiting until `deadline`: `Ok(None)` when the deadline passed with
    /// no whole message (the stream stays usable).
    pub fn next_message(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, HttpError> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let mut msg: Vec<u8> = self.pending.drain(..=i).collect();
                msg.pop();
                if msg.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(msg));
            }
            if self.ended {
                return Err(HttpError::Io {
                    endpoint: self.conn.endpoint.to_string(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Only the wait for the chunk's start may time out harmlessly; once a chunk has
            // begun it is read whole (the server sends each message in one go).
            if self.conn.reader.buffer().is_empty() {
                self.conn.set_deadline(deadline)?;
                match self.conn.reader.fill_buf() {
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(&self.conn.endpoint, e)),
                }
            }
            let chunk_deadline = Instant::now() + Duration::from_secs(5);
            match self.conn.read_chunk(chunk_deadline)? {
                Some(chunk) => {
                    self.pending.extend_from_slice(&chunk);
                    if self.pending.len() > MAX_BODY {
                        return Err(self.conn.malformed("stream message too large"));
                    }
                }
                None => self.ended = true,
            }
        }
    }

    /// A handle that can close this stream from another thread.
    pub fn closer(&self) -> Result<Closer, HttpError> {
        let stream = self
            .conn
            .reader
            .get_ref()
            .try_clone()
            .map_err(|e| io_err(&self.conn.endpoint, e))?;
        Ok(Closer(stream))
    }
}

/// Closes a [`Stream`] from elsewhere: its reader then sees the end.
#[derive(Debug)]
pub struct Closer(TcpStream);

impl Closer {
    /// Shuts the connection down (both directions).
    pub fn close(&self) {
        // Already closed or reset: nothing left to do.
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

fn left(endpoint: &Endpoint, deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Timeout {
            endpoint: endpoint.to_string(),
        });
    }
    Ok(left)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_err(endpoint: &Endpoint, source: io::Error) -> HttpError {
    HttpError::Io {
        endpoint: endpoint.to_string(),
        source,
    }
}

fn io_or_timeout(endpoint: &Endpoint, e: io::Error) -> HttpError {
    if is_timeout(&e) {
        HttpError::Timeout {
            endpoint: endpoint.to_string(),
        }
    } else {
        io_err(endpoint, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_with_a_port() {
        assert_eq!(
            Endpoint::parse("http://10.0.0.1:2379/")
                .map(|e| e.authority)
                .ok(),
            Some("10.0.0.1:2379".to_owned())
        );
        for bad in [
            "https://a:1",
            "a:1",
            "http://",
            "http://a",
            "http://a:x",
            "http://a:1/v3",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
