//! A small local control interface in the spirit of eGossip's HTTP API,
//! bound to 127.0.0.1 only: HTTP/1.0, one request per connection.
//!
//! ```text
//! GET  /members    live members, JSON
//! GET  /metadata   the metadata as the body; its version in X-Version
//! GET  /stats      counters, mode, version, JSON
//! POST /publish    publishes the request body as the new metadata
//! POST /set        adds peers, one IP:PORT per line (pekonode Set)
//! POST /stop       pauses heartbeats (pekonode Stop)
//! POST /start      resumes them, or joins (pekonode Start / Join)
//! ```
//!
//! Anyone on this host can use it (as with eGossip's); it never listens on
//! another address.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol;
use crate::shell::Handle;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;

/// The control server; stops when dropped.
pub struct Control {
    addr: SocketAddrV4,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Listens on 127.0.0.1:`port` and serves requests for `node`.
    pub fn start(port: u16, node: Handle) -> io::Result<Control> {
        let listener = Arc::new(TcpListener::bind(SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            port,
        ))?);
        let addr = match listener.local_addr()? {
            std::net::SocketAddr::V4(addr) => addr,
            std::net::SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let incoming = Arc::clone(&listener);
        let thread = thread::Builder::new()
            .name("gossip-control".into())
            .spawn(move || {
                for stream in incoming.incoming() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    match stream {
                        Ok(stream) => {
                            if let Err(err) = serve(stream, &node) {
                                log::debug!("control request: {err}");
                            }
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(Control {
            addr,
            listener,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        crate::shell::wake_accept(&self.listener);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// A response: status, extra headers, content type and body.
struct Response {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            content_type,
            body: body.into(),
        }
    }

    fn text(status: &'static str, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Response::new(status, "text/plain", body)
    }

    fn json(body: &impl Serialize) -> Self {
        let mut body = serde_json::to_vec(body).expect("plain structs serialize");
        body.push(b'\n');
        Response::new("200 OK", "application/json", body)
    }
}

fn serve(stream: TcpStream, node: &Handle) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let response = match read_request(&mut reader, node.max_metadata()) {
        Ok(request) => route(&request, node),
        Err(err) => Response::text("400 Bad Request", err.to_string()),
    };
    let mut stream = reader.into_inner();
    let mut head = format!(
        "HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

fn read_request(reader: &mut impl BufRead, max_body: usize) -> io::Result<Request> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    // The head is read through a limit, so a client cannot make us buffer
    // an endless line.
    let mut head = reader.by_ref().take(MAX_HEAD as u64);
    let mut line = String::new();
    head.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is spoken here"));
    }
    let (method, path) = (method.to_string(), path.to_string());
    let mut content_length = 0usize;
    loop {
        line.clear();
        if head.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            return Err(bad("header cut short or longer than 8 KiB"));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("bad Content-Length"))?;
            }
        }
    }
    if content_length > max_body {
        return Err(bad("body larger than the largest metadata"));
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    Ok(Request { method, path, body })
}

fn route(request: &Request, node: &Handle) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/members") => Response::json(&MembersJson {
            members: node.members().iter().map(ToString::to_string).collect(),
        }),
        ("GET", "/metadata") => {
            let metadata = node.read();
            let mut response = Response::new("200 OK", "application/octet-stream", metadata.data);
            response
                .headers
                .push(("X-Version", metadata.version.to_string()));
            response
        }
        ("GET", "/stats") => Response::json(&StatsJson::of(node)),
        ("POST", "/publish") => match node.publish(request.body.clone()) {
            Ok(version) => Response::text("200 OK", version.to_string()),
            Err(err) => Response::text("413 Payload Too Large", err.to_string()),
        },
        ("POST", "/set") => match parse_peers(&request.body) {
            Ok(peers) => {
                node.set(&peers);
                Response::text("200 OK", format!("{} peers added", peers.len()))
            }
            Err(err) => Response::text("400 Bad Request", err),
        },
        ("POST", "/stop") => {
            node.stop();
            Response::text("200 OK", "stopped")
        }
        ("POST", "/start") => {
            node.start();
            Response::text("200 OK", "started")
        }
        (_, "/members" | "/metadata" | "/stats" | "/publish" | "/set" | "/stop" | "/start") => {
            Response::text("405 Method Not Allowed", "wrong method")
        }
        _ => Response::text(
            "404 Not Found",
            "GET /members /metadata /stats, POST /publish /set /stop /start",
        ),
    }
}

/// One IP:PORT per line (or separated by spaces or commas).
fn parse_peers(body: &[u8]) -> Result<Vec<SocketAddrV4>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "peers must be text".to_string())?;
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{s:?} is not an IPv4 address and port"))
        })
        .collect()
}

/// The body of `GET /members`.
#[derive(Debug, Serialize)]
pub struct MembersJson {
    /// Live members, `IP:PORT`.
    pub members: Vec<String>,
}

/// The body of `GET /stats`: the node's counters, flat.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsJson {
    pub id: String,
    /// `kernel` or `user`.
    pub mode: String,
    pub joined: bool,
    pub paused: bool,
    pub members: u64,
    /// The metadata's version, as `POST /publish` returns it.
    pub version: String,
    /// The protocol core's counters, one field each.
    #[serde(flatten)]
    pub protocol: protocol::Stats,
    pub dropped: u64,
    pub broadcasts: u64,
    pub kernel_fan_outs: u64,
    pub kernel_copies: u64,
    pub copies_failed: u64,
    pub user_space_copies: u64,
    pub oversize_sends: u64,
    pub send_failures: u64,
}

impl StatsJson {
    fn of(node: &Handle) -> StatsJson {
        let s = node.stats();
        let p = s.protocol;
        let b = s.broadcast;
        StatsJson {
            id: node.id().to_string(),
            mode: match s.mode {
                elec_broadcast::Mode::Kernel => "kernel",
                _ => "user",
            }
            .to_string(),
            joined: s.joined,
            paused: s.paused,
            members: s.members as u64,
            version: s.version.to_string(),
            protocol: p,
            dropped: p.dropped(),
            broadcasts: b.broadcasts,
            kernel_fan_outs: b.fan_outs,
            kernel_copies: b.kernel_copies,
            copies_failed: b.copies_failed,
            user_space_copies: b.user_space_copies,
            oversize_sends: s.oversize_sends,
            send_failures: s.send_failures,
        }
    }
}

/// A minimal HTTP/1.0 client for the control interface (used by the demo):
/// returns the status code, the `X-Version` header if any, and the body.
pub fn request(
    stream: TcpStream,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Option<String>, Vec<u8>)> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut stream = stream;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let version = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(name, _)| name.eq_ignore_ascii_case("x-version"))
            .map(|(_, v)| v.trim().to_string())
    });
    Ok((status, version, response[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_with_a_body() {
        let raw = b"POST /publish HTTP/1.0\r\nHost: x\r\ncontent-length: 5\r\n\r\nhelloEXTRA";
        let request = read_request(&mut &raw[..], 100).unwrap();
        assert_eq!(
            request,
            Request {
                method: "POST".into(),
                path: "/publish".into(),
                body: b"hello".to_vec()
            }
        );
    }

    #[test]
    fn members_reply_is_a_list_of_addresses() {
        let members = MembersJson {
            members: vec!["10.0.0.1:7946".into(), "10.0.0.2:7946".into()],
        };
        assert_eq!(
            serde_json::to_string(&members).unwrap(),
            r#"{"members":["10.0.0.1:7946","10.0.0.2:7946"]}"#
        );
    }

    #[test]
    fn parses_peer_lists() {
        assert_eq!(
            parse_peers(b"10.0.0.1:7946\n10.0.0.2:7000, 10.0.0.3:1")
                .unwrap()
                .len(),
            3
        );
        assert!(parse_peers(b"10.0.0.1").is_err());
        assert!(parse_peers(b"\xff").is_err());
    }

    #[test]
    fn refuses_bad_requests() {
        let too_big = b"POST /publish HTTP/1.0\r\nContent-Length: 101\r\n\r\n";
        assert!(read_request(&mut &too_big[..], 100).is_err());
        let garbage = b"\x00\x01\r\n\r\n";
        assert!(read_request(&mut &garbage[..], 100).is_err());
        let endless = [b"GET / HTTP/1.0\r\n".as_slice(), &[b'a'; 9000], b"\r\n\r\n"].concat();
        assert!(read_request(&mut &endless[..], 100).is_err());
        let cut = b"GET /members HTTP/1.0\r\nHost: x\r\n";
        assert!(read_request(&mut &cut[..], 100).is_err());
    }
}
