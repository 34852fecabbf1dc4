//! A minimal blocking HTTP/1.1 client for loopback, used by the tests and `rankmysteps bench
//! web`: keep-alive GETs of the JSON API, and raw event streams. Not a general client: no TLS,
//! no redirects, no chunked request bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive connection to one server.
pub struct Connection {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl Connection {
    /// Connects to `addr`, with `timeout` on every read and write.
    pub fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
            addr,
        })
    }

    /// Sends `GET path` with `method` and reads the whole response.
    pub fn request(&mut self, method: &str, path: &str) -> std::io::Result<Response> {
        write!(
            self.reader.get_mut(),
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n",
            self.addr
        )?;
        self.reader.get_mut().flush()?;
        let (status, headers) = read_head(&mut self.reader)?;
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| invalid("bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = header("content-length") {
            let len: usize = len
                .trim()
                .parse()
                .map_err(|_| invalid("bad content-length"))?;
            body.resize(len, 0);
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path)
    }
}

/// Reads a status line and headers.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

/// One `GET` on a fresh connection (5 s timeout).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    Connection::open(addr, Duration::from_secs(5))?.get(path)
}

/// An open event stream (`GET /api/events...`), read event by event.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    /// The response's status.
    pub status: u16,
    /// The response's headers.
    pub headers: Vec<(String, String)>,
    chunk_left: usize,
}

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sse {
    /// Its `event:` name.
    pub event: String,
    /// Its `data:` (lines joined by newlines).
    pub data: String,
}

impl EventStream {
    /// Opens `path` on `addr`; every read waits at most `timeout`.
    pub fn open(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<EventStream> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut writer = stream.try_clone()?;
        write!(
            writer,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )?;
        writer.flush()?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        Ok(EventStream {
            reader,
            status,
            headers,
            chunk_left: 0,
        })
    }

    /// The underlying socket (e.g. to change its read timeout).
    pub fn socket(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// A line of the (chunked) body, without its line ending.
    fn line(&mut self) -> std::io::Result<String> {
        let mut out = Vec::new();
        loop {
            if self.chunk_left == 0 {
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stream closed",
                    ));
                }
                if size.trim().is_empty() {
                    continue; // the CRLF after a chunk
                }
                self.chunk_left = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| invalid("bad chunk size"))?;
                if self.chunk_left == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stream ended",
                    ));
                }
            }
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream closed",
                ));
            }
            let n = buf.len().min(self.chunk_left);
            let part = &buf[..n];
            if let Some(i) = part.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&part[..i]);
                self.reader.consume(i + 1);
                self.chunk_left -= i + 1;
                if out.last() == Some(&b'\r') {
                    out.pop();
                }
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(part);
            self.reader.consume(n);
            self.chunk_left -= n;
        }
    }

    /// The next event (keep-alive comments are skipped).
    pub fn next_event(&mut self) -> std::io::Result<Sse> {
        let mut event = Sse::default();
        let mut any = false;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                if any {
                    if event.event.is_empty() {
                        event.event = "message".into();
                    }
                    return Ok(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            any = true;
            match field {
                "event" => event.event = value.to_owned(),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                _ => {}
            }
        }
    }
}
