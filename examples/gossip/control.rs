//! A small local control interface in the spirit of eGossip's HTTP API,
//! bound to 127.0.0.1 only: HTTP/1.0, one request per connection.
//!
//! ```text
//! GET    /members       alive and suspect members, JSON
//! GET    /states        every member with its state and incarnation, JSON
//! GET    /metadata      the cluster-wide metadata as the body; its version
//!                       in X-Version
//! GET    /stats         counters, mode, version, JSON
//! GET    /kv            every node's keys and values as this node knows
//!                       them, JSON (see below)
//! GET    /kv/<node>/<key>  one key of <node> (IP:PORT) as this node knows
//!                       it: the value as the body, or 404
//! GET    /traffic       per peer: copies sent to it, datagrams received
//!                       from it, JSON
//! GET    /events?since=N  the logged events from number N on, each with
//!                       the CLOCK_MONOTONIC time it was raised, JSON (nodes
//!                       started with --event-log; 409 otherwise)
//! GET    /keys          the keyring: primary key id and installed ids, JSON
//! POST   /publish       publishes the body as the cluster-wide metadata
//! POST   /kv/<key>      sets this node's <key> to the body
//! DELETE /kv/<key>      deletes this node's <key>
//! POST   /set           adds seeds, one IP:PORT per line (pekonode Set)
//! POST   /stop          pauses sending (pekonode Stop)
//! POST   /start         resumes, or joins (pekonode Start / Join)
//! POST   /leave         leaves the cluster gracefully; keep the process
//!                       running a few gossip intervals, then stop it
//! POST   /keys/install  body `ID SECRET`: adds key ID (0-255) to the keyring
//! POST   /keys/use      body `ID`: makes key ID the one that seals
//! POST   /keys/remove   body `ID`: removes key ID
//! ```
//!
//! Keys and values are bytes. In a path, `<key>` is percent-decoded
//! (`/kv/a%2Fb` is the key `a/b`; any byte can be written `%XX`). In
//! `GET /kv`, a key or value that is valid UTF-8 is given as a string
//! (`"key"`, `"value"`), any other as lower-case hex (`"key_hex"`,
//! `"value_hex"`): never both, so the two cannot be confused.
//!
//! Anyone on this host can use it (as with eGossip's): it has no
//! authentication, and never listens on another address.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{KeyId, State};
use crate::protocol::{self, ValueError};
use crate::shell::Handle;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body: far above any value the core accepts (a datagram
/// holds it), so that too large a value gets the core's own refusal, which
/// says what fits.
const MAX_BODY: usize = 64 * 1024;

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
        wake_accept(&self.listener);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes a thread blocked in `accept` on `listener` return (with an error),
/// from any thread: shutting a listening socket down wakes its waiters on
/// Linux.
fn wake_accept(listener: &TcpListener) {
    let _ = socket2::SockRef::from(listener).shutdown(std::net::Shutdown::Both);
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
    let response = match read_request(&mut reader, MAX_BODY) {
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
        return Err(bad("body too large"));
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    Ok(Request { method, path, body })
}

/// The paths of the routes without a parameter, for 405s.
const FIXED_PATHS: [&str; 16] = [
    "/members",
    "/states",
    "/metadata",
    "/stats",
    "/kv",
    "/keys",
    "/traffic",
    "/events",
    "/publish",
    "/set",
    "/stop",
    "/start",
    "/leave",
    "/keys/install",
    "/keys/use",
    "/keys/remove",
];

const ROUTES: &str = "GET /members /states /metadata /stats /kv /kv/<node>/<key> /keys \
                      /traffic /events (?since=N); POST /publish /set /stop /start /leave \
                      /kv/<key> /keys/install /keys/use /keys/remove; DELETE /kv/<key>";

fn route(request: &Request, node: &Handle) -> Response {
    let method = request.method.as_str();
    let path = request.path.as_str();
    if let Some(key) = path.strip_prefix("/kv/") {
        return route_key(method, key, &request.body, node);
    }
    if method == "GET" && (path == "/events" || path.starts_with("/events?")) {
        if let Some(query) = path.strip_prefix("/events") {
            return match parse_since(query) {
                Ok(since) => match node.events_since(since) {
                    Some((events, next)) => Response::json(&EventsJson::of(&events, next)),
                    None => Response::text(
                        "409 Conflict",
                        "the event log is off: start the node with --event-log",
                    ),
                },
                Err(err) => Response::text("400 Bad Request", err.to_string()),
            };
        }
    }
    match (method, path) {
        ("GET", "/members") => Response::json(&MembersJson {
            members: node.members().iter().map(ToString::to_string).collect(),
        }),
        ("GET", "/states") => Response::json(&StatesJson::of(node)),
        ("GET", "/metadata") => {
            let metadata = node.read();
            let mut response = Response::new("200 OK", "application/octet-stream", metadata.data);
            response
                .headers
                .push(("X-Version", metadata.version.to_string()));
            response
        }
        ("GET", "/stats") => Response::json(&StatsJson::of(node)),
        ("GET", "/kv") => Response::json(&KvJson::of(&node.all_entries())),
        ("GET", "/keys") => {
            let (primary, ids) = node.keys();
            Response::json(&KeysJson { primary, ids })
        }
        ("GET", "/traffic") => Response::json(&TrafficJson::of(&node.traffic())),
        ("POST", "/publish") => match node.publish(request.body.clone()) {
            Ok(version) => Response::text("200 OK", version.to_string()),
            Err(err) => value_error(&err),
        },
        ("POST", "/set") => match parse_peers(&request.body) {
            Ok(peers) => {
                node.add_seeds(&peers);
                Response::text("200 OK", format!("{} seeds added", peers.len()))
            }
            Err(err) => Response::text("400 Bad Request", err.to_string()),
        },
        ("POST", "/stop") => {
            node.stop();
            Response::text("200 OK", "stopped")
        }
        ("POST", "/start") => {
            node.start();
            Response::text("200 OK", "started")
        }
        ("POST", "/leave") => {
            node.leave();
            Response::text(
                "200 OK",
                format!(
                    "left: keep the process running for {:?} so that the leave spreads, then \
                     stop it",
                    node.leave_grace()
                ),
            )
        }
        ("POST", "/keys/install") => match parse_install(&request.body) {
            Ok((id, secret)) => {
                node.install_key(id, &secret);
                Response::text("200 OK", format!("key {id} installed"))
            }
            Err(err) => Response::text("400 Bad Request", err.to_string()),
        },
        ("POST", "/keys/use") => match parse_key_id(&request.body) {
            Ok(id) => match node.use_key(id) {
                Ok(()) => Response::text("200 OK", format!("key {id} now seals")),
                Err(err) => Response::text("409 Conflict", err.to_string()),
            },
            Err(err) => Response::text("400 Bad Request", err.to_string()),
        },
        ("POST", "/keys/remove") => match parse_key_id(&request.body) {
            Ok(id) => match node.remove_key(id) {
                Ok(()) => Response::text("200 OK", format!("key {id} removed")),
                Err(err) => Response::text("409 Conflict", err.to_string()),
            },
            Err(err) => Response::text("400 Bad Request", err.to_string()),
        },
        (_, path) if FIXED_PATHS.contains(&path) => {
            Response::text("405 Method Not Allowed", "wrong method")
        }
        _ => Response::text("404 Not Found", ROUTES),
    }
}

/// `POST /kv/<key>`, `DELETE /kv/<key>` and `GET /kv/<node>/<key>`; `raw`
/// is what follows `/kv/` in the path.
fn route_key(method: &str, raw: &str, body: &[u8], node: &Handle) -> Response {
    if method == "GET" {
        return match parse_node_key(raw) {
            Ok((owner, key)) => match node.get(crate::codec::NodeId(owner), &key) {
                Some(value) => Response::new("200 OK", "application/octet-stream", value),
                None => Response::text("404 Not Found", "not set, or not heard of yet"),
            },
            Err(err) => Response::text("400 Bad Request", err.to_string()),
        };
    }
    let key = match percent_decode(raw) {
        Ok(key) => key,
        Err(err) => return Response::text("400 Bad Request", err.to_string()),
    };
    match method {
        "POST" | "PUT" => match node.set_key(&key, body.to_vec()) {
            Ok(version) => Response::text("200 OK", format!("set, version {version}")),
            Err(err) => value_error(&err),
        },
        "DELETE" => match node.delete_key(&key) {
            Ok(Some(version)) => Response::text("200 OK", format!("deleted, version {version}")),
            Ok(None) => Response::text("404 Not Found", "the key is not set"),
            Err(err) => value_error(&err),
        },
        _ => Response::text(
            "405 Method Not Allowed",
            "POST or DELETE /kv/<key>, GET /kv/<node>/<key>",
        ),
    }
}

/// The status that fits a refused write.
fn value_error(err: &ValueError) -> Response {
    let status = match err {
        ValueError::TooLarge { .. } => "413 Payload Too Large",
        ValueError::BadKey => "400 Bad Request",
        ValueError::Left => "409 Conflict",
    };
    Response::text(status, err.to_string())
}

/// Why a request's path or body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    /// The body is not UTF-8 text.
    NotText,
    /// Not an IPv4 address and port.
    BadPeer(String),
    /// Not a key id (0-255).
    BadKeyId(String),
    /// `POST /keys/install` without a secret after the id.
    NoSecret,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `GET /kv/<node>/<key>` without a node (IP:PORT) and a key.
    BadNodeKey(String),
    /// `GET /events` with a query other than `?since=N`.
    BadSince(String),
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRequest::NotText => write!(f, "the body must be UTF-8 text"),
            BadRequest::BadPeer(s) => write!(f, "{s:?} is not an IPv4 address and port"),
            BadRequest::BadKeyId(s) => write!(f, "{s:?} is not a key id (0 to 255)"),
            BadRequest::NoSecret => write!(f, "expected `ID SECRET`: the secret is missing"),
            BadRequest::BadEscape => {
                write!(f, "a % in the path must be followed by two hex digits")
            }
            BadRequest::BadSince(s) => {
                write!(f, "{s:?}: expected /events or /events?since=N")
            }
            BadRequest::BadNodeKey(s) => write!(
                f,
                "{s:?}: expected /kv/<node>/<key>, the node as IP:PORT (a / in the key \
                 written %2F)"
            ),
        }
    }
}

impl std::error::Error for BadRequest {}

fn text(body: &[u8]) -> Result<&str, BadRequest> {
    std::str::from_utf8(body).map_err(|_| BadRequest::NotText)
}

/// One IP:PORT per line (or separated by spaces or commas).
fn parse_peers(body: &[u8]) -> Result<Vec<SocketAddrV4>, BadRequest> {
    text(body)?
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| BadRequest::BadPeer(s.to_string())))
        .collect()
}

/// A key id alone (white space around it ignored).
fn parse_key_id(body: &[u8]) -> Result<KeyId, BadRequest> {
    let id = text(body)?.trim();
    id.parse().map_err(|_| BadRequest::BadKeyId(id.to_string()))
}

/// `ID SECRET`: the id, white space, then the secret, which is the rest of
/// the body with the white space at its ends removed (it may hold spaces).
fn parse_install(body: &[u8]) -> Result<(KeyId, Vec<u8>), BadRequest> {
    let body = text(body)?.trim();
    let (id, secret) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let id = id
        .parse()
        .map_err(|_| BadRequest::BadKeyId(id.to_string()))?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(BadRequest::NoSecret);
    }
    Ok((id, secret.as_bytes().to_vec()))
}

/// What follows `/events`: nothing (from the first event kept) or
/// `?since=N`.
fn parse_since(query: &str) -> Result<u64, BadRequest> {
    if query.is_empty() {
        return Ok(0);
    }
    query
        .strip_prefix("?since=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| BadRequest::BadSince(query.to_string()))
}

/// `<node>/<key>` of `GET /kv/<node>/<key>`: the node's address, and the
/// key percent-decoded (it may hold `/`, written as is or `%2F`).
fn parse_node_key(raw: &str) -> Result<(SocketAddrV4, Vec<u8>), BadRequest> {
    let bad = || BadRequest::BadNodeKey(raw.to_string());
    let (owner, key) = raw.split_once('/').ok_or_else(bad)?;
    let owner = owner.parse().map_err(|_| bad())?;
    Ok((owner, percent_decode(key)?))
}

/// A path segment with its `%XX` escapes decoded (nothing else changes: a
/// `+` stays a `+`).
fn percent_decode(raw: &str) -> Result<Vec<u8>, BadRequest> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(BadRequest::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The body of `GET /members`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembersJson {
    /// Alive and suspect members, `IP:PORT`.
    pub members: Vec<String>,
}

/// The body of `GET /states`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatesJson {
    /// Every member this node has a record of, itself included, sorted.
    pub members: Vec<MemberJson>,
}

/// A member in `GET /states`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    /// `IP:PORT`.
    pub node: String,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
    /// Its incarnation number.
    pub incarnation: u64,
}

impl StatesJson {
    fn of(node: &Handle) -> StatesJson {
        StatesJson {
            members: node
                .member_states()
                .into_iter()
                .map(|m| MemberJson {
                    node: m.node.to_string(),
                    state: state_name(m.state).to_string(),
                    incarnation: m.incarnation,
                })
                .collect(),
        }
    }
}

/// How `GET /states` names a state.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Alive => "alive",
        State::Suspect => "suspect",
        State::Dead => "dead",
        State::Left => "left",
    }
}

/// The body of `GET /kv`: one entry per node this node has a record of.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvJson {
    /// The nodes, sorted, with their keys in key order.
    pub nodes: Vec<NodeKvJson>,
}

/// One node's keys in `GET /kv`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKvJson {
    /// `IP:PORT`.
    pub node: String,
    /// Its keys that are set.
    pub entries: Vec<EntryJson>,
}

/// One key and value in `GET /kv`: each as a string when it is UTF-8, else
/// as hex under the `_hex` name (exactly one of the two is present).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryJson {
    /// The key, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key in hex, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hex: Option<String>,
    /// The value, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in hex, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

/// Bytes as (UTF-8 text, None) or (None, hex).
fn text_or_hex(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    }
}

impl KvJson {
    /// The JSON of [`Handle::all_entries`].
    pub fn of(all: &[(crate::codec::NodeId, crate::shell::Entries)]) -> KvJson {
        KvJson {
            nodes: all
                .iter()
                .map(|(node, entries)| NodeKvJson {
                    node: node.to_string(),
                    entries: entries
                        .iter()
                        .map(|(key, value)| {
                            let (key, key_hex) = text_or_hex(key);
                            let (value, value_hex) = text_or_hex(value);
                            EntryJson {
                                key,
                                key_hex,
                                value,
                                value_hex,
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The body of `GET /traffic`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficJson {
    /// Every peer this node sent to or received from, sorted.
    pub peers: Vec<PeerTrafficJson>,
}

/// One peer in `GET /traffic`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTrafficJson {
    /// `IP:PORT`.
    pub node: String,
    /// Copies sent to it (as the broadcaster reported them sent).
    pub sent: u64,
    /// Datagrams received from it.
    pub received: u64,
}

impl TrafficJson {
    fn of(all: &[(std::net::SocketAddr, crate::shell::PeerTraffic)]) -> TrafficJson {
        TrafficJson {
            peers: all
                .iter()
                .map(|(addr, t)| PeerTrafficJson {
                    node: addr.to_string(),
                    sent: t.sent,
                    received: t.received,
                })
                .collect(),
        }
    }
}

/// The body of `GET /events`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsJson {
    /// The number the next event will get: ask `?since=` that next time.
    pub next: u64,
    /// The events, oldest first.
    pub events: Vec<EventJson>,
}

/// One event in `GET /events`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventJson {
    /// Its number.
    pub seq: u64,
    /// When it was raised: CLOCK_MONOTONIC, nanoseconds.
    pub at_ns: u64,
    /// `joined`, `suspected`, `refuted`, `failed`, `left`, `restarted`,
    /// `changed` or `published`.
    pub kind: String,
    /// The member concerned (`IP:PORT`); for `changed`, whose key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For `changed`: the key, when UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `changed`: the key in hex, when not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hex: Option<String>,
    /// For `published`: the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl EventsJson {
    fn of(events: &[crate::shell::LoggedEvent], next: u64) -> EventsJson {
        use crate::protocol::Event;
        EventsJson {
            next,
            events: events
                .iter()
                .map(|logged| {
                    let mut json = EventJson {
                        seq: logged.seq,
                        at_ns: logged.at_ns,
                        ..EventJson::default()
                    };
                    let (kind, node) = match &logged.event {
                        Event::Joined(n) => ("joined", Some(n)),
                        Event::Suspected(n) => ("suspected", Some(n)),
                        Event::Refuted(n) => ("refuted", Some(n)),
                        Event::Failed(n) => ("failed", Some(n)),
                        Event::Left(n) => ("left", Some(n)),
                        Event::Restarted(n) => ("restarted", Some(n)),
                        Event::Changed { node, key } => {
                            (json.key, json.key_hex) = text_or_hex(key);
                            ("changed", Some(node))
                        }
                        Event::Published(version) => {
                            json.version = Some(version.to_string());
                            ("published", None)
                        }
                    };
                    json.kind = kind.to_string();
                    json.node = node.map(ToString::to_string);
                    json
                })
                .collect(),
        }
    }
}

/// The body of `GET /keys`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysJson {
    /// The key that seals what this node sends.
    pub primary: KeyId,
    /// Every installed key (each opens), sorted.
    pub ids: Vec<KeyId>,
}

/// The body of `GET /stats`: the node's state and counters, flat.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsJson {
    /// This node, `IP:PORT`.
    pub id: String,
    /// `kernel` or `user`.
    pub mode: String,
    /// Joined and not left.
    pub joined: bool,
    /// Left the cluster.
    pub left: bool,
    /// Sending paused (`POST /stop`).
    pub paused: bool,
    /// Alive and suspect members, this node included.
    pub members: u64,
    /// This node's incarnation number.
    pub incarnation: u64,
    /// The metadata's version, as `POST /publish` returns it.
    pub version: String,
    /// Updates and deltas waiting to be gossiped.
    pub queued: u64,
    /// Largest key plus value `POST /kv/<key>` and `POST /publish` accept.
    pub max_value: u64,
    /// The protocol core's counters, one field each.
    #[serde(flatten)]
    pub protocol: protocol::Stats,
    /// All dropped packets, whatever the reason.
    pub dropped: u64,
    /// `broadcast` calls.
    pub broadcasts: u64,
    /// Broadcasts the kernel fanned out.
    pub kernel_fan_outs: u64,
    /// Copies the kernel made.
    pub kernel_copies: u64,
    /// Copies that were not sent.
    pub copies_failed: u64,
    /// Copies sent from user space.
    pub user_space_copies: u64,
    /// Copies too large for one frame, sent one `sendto` each.
    pub oversize_sends: u64,
    /// Datagrams that could not be sent.
    pub send_failures: u64,
    /// `batched` (recvmmsg) or `plain` (one recvfrom per datagram).
    pub recv: String,
    /// Receive rounds that returned datagrams (batched: one `recvmmsg`
    /// each).
    pub recv_batches: u64,
    /// Datagrams they returned.
    pub recv_datagrams: u64,
    /// Receive system calls, those that returned nothing included.
    pub recv_calls: u64,
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
            left: s.left,
            paused: s.paused,
            members: s.members as u64,
            incarnation: s.incarnation,
            version: s.version.to_string(),
            queued: s.queued as u64,
            max_value: s.max_value as u64,
            protocol: p,
            dropped: p.dropped(),
            broadcasts: b.broadcasts,
            kernel_fan_outs: b.fan_outs,
            kernel_copies: b.kernel_copies,
            copies_failed: b.copies_failed,
            user_space_copies: b.user_space_copies,
            oversize_sends: s.oversize_sends,
            send_failures: s.send_failures,
            recv: s.recv_mode.name().to_string(),
            recv_batches: s.recv_batches,
            recv_datagrams: s.recv_datagrams,
            recv_calls: s.recv_calls,
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
        assert_eq!(
            parse_peers(b"10.0.0.1"),
            Err(BadRequest::BadPeer("10.0.0.1".into()))
        );
        assert_eq!(parse_peers(b"\xff"), Err(BadRequest::NotText));
    }

    #[test]
    fn parses_key_ids_and_installs() {
        assert_eq!(parse_key_id(b" 7\n"), Ok(7));
        assert_eq!(parse_key_id(b"255"), Ok(255));
        assert_eq!(
            parse_key_id(b"256"),
            Err(BadRequest::BadKeyId("256".into()))
        );
        assert!(parse_key_id(b"").is_err());
        assert_eq!(parse_key_id(b"\xff"), Err(BadRequest::NotText));
        assert_eq!(
            parse_install(b"2 new secret\n"),
            Ok((2, b"new secret".to_vec()))
        );
        assert_eq!(parse_install(b"2\tx"), Ok((2, b"x".to_vec())));
        assert_eq!(parse_install(b"2"), Err(BadRequest::NoSecret));
        assert_eq!(parse_install(b"2   \n"), Err(BadRequest::NoSecret));
        assert_eq!(
            parse_install(b"x secret"),
            Err(BadRequest::BadKeyId("x".into()))
        );
        assert_eq!(
            parse_install(b"-1 secret"),
            Err(BadRequest::BadKeyId("-1".into()))
        );
    }

    #[test]
    fn keys_in_paths_are_percent_decoded() {
        assert_eq!(percent_decode("role"), Ok(b"role".to_vec()));
        assert_eq!(percent_decode("a%2Fb%20c+d"), Ok(b"a/b c+d".to_vec()));
        assert_eq!(percent_decode("%ff%00"), Ok(vec![0xff, 0]));
        assert_eq!(percent_decode(""), Ok(Vec::new()));
        assert_eq!(percent_decode("a%2"), Err(BadRequest::BadEscape));
        assert_eq!(percent_decode("a%zz"), Err(BadRequest::BadEscape));
        assert_eq!(percent_decode("%"), Err(BadRequest::BadEscape));
    }

    #[test]
    fn kv_json_gives_text_as_text_and_other_bytes_as_hex() {
        let node = crate::codec::NodeId("10.0.0.1:7946".parse().unwrap());
        let all = vec![(
            node,
            vec![
                (b"role".to_vec(), b"db".to_vec()),
                (vec![0xff, 0], b"x".to_vec()),
                (b"blob".to_vec(), vec![0xc0, 0xff, 0xee]),
            ],
        )];
        assert_eq!(
            serde_json::to_string(&KvJson::of(&all)).unwrap(),
            r#"{"nodes":[{"node":"10.0.0.1:7946","entries":[{"key":"role","value":"db"},{"key_hex":"ff00","value":"x"},{"key":"blob","value_hex":"c0ffee"}]}]}"#
        );
    }

    #[test]
    fn kv_reads_name_the_node_then_the_key() {
        let node: SocketAddrV4 = "10.0.0.1:7946".parse().unwrap();
        assert_eq!(
            parse_node_key("10.0.0.1:7946/role"),
            Ok((node, b"role".to_vec()))
        );
        assert_eq!(
            parse_node_key("10.0.0.1:7946/a/b%2Fc"),
            Ok((node, b"a/b/c".to_vec()))
        );
        assert_eq!(parse_node_key("10.0.0.1:7946/"), Ok((node, Vec::new())));
        for bad in ["role", "10.0.0.1/role", "node:1/role", ""] {
            assert_eq!(
                parse_node_key(bad),
                Err(BadRequest::BadNodeKey(bad.to_string()))
            );
        }
        assert_eq!(
            parse_node_key("10.0.0.1:7946/%zz"),
            Err(BadRequest::BadEscape)
        );
    }

    #[test]
    fn events_json_names_kinds_and_keys() {
        use crate::protocol::Event;
        use crate::shell::LoggedEvent;
        let node = crate::codec::NodeId("10.0.0.1:7946".parse().unwrap());
        let logged = |seq, event| LoggedEvent {
            seq,
            at_ns: 1000 + seq,
            event,
        };
        let json = EventsJson::of(
            &[
                logged(4, Event::Joined(node)),
                logged(
                    5,
                    Event::Changed {
                        node,
                        key: b"role".to_vec(),
                    },
                ),
                logged(
                    6,
                    Event::Changed {
                        node,
                        key: vec![0xff],
                    },
                ),
            ],
            7,
        );
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"next":7,"events":[{"seq":4,"at_ns":1004,"kind":"joined","node":"10.0.0.1:7946"},{"seq":5,"at_ns":1005,"kind":"changed","node":"10.0.0.1:7946","key":"role"},{"seq":6,"at_ns":1006,"kind":"changed","node":"10.0.0.1:7946","key_hex":"ff"}]}"#
        );
        assert_eq!(parse_since(""), Ok(0));
        assert_eq!(parse_since("?since=12"), Ok(12));
        for bad in ["?since=", "?since=x", "?from=1", "/x"] {
            assert_eq!(parse_since(bad), Err(BadRequest::BadSince(bad.to_string())));
        }
    }

    #[test]
    fn traffic_json_lists_peers() {
        let peer = crate::shell::PeerTraffic {
            sent: 3,
            received: 2,
        };
        let json = TrafficJson::of(&[("10.0.0.2:7946".parse().unwrap(), peer)]);
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"peers":[{"node":"10.0.0.2:7946","sent":3,"received":2}]}"#
        );
    }

    #[test]
    fn states_json_names_the_states() {
        assert_eq!(state_name(State::Alive), "alive");
        assert_eq!(state_name(State::Suspect), "suspect");
        assert_eq!(state_name(State::Dead), "dead");
        assert_eq!(state_name(State::Left), "left");
        let states = StatesJson {
            members: vec![MemberJson {
                node: "10.0.0.1:7946".into(),
                state: "left".into(),
                incarnation: 3,
            }],
        };
        assert_eq!(
            serde_json::to_string(&states).unwrap(),
            r#"{"members":[{"node":"10.0.0.1:7946","state":"left","incarnation":3}]}"#
        );
    }

    #[test]
    fn every_fixed_path_is_listed_in_the_404() {
        let listed: Vec<&str> = ROUTES
            .split(|c: char| c.is_whitespace() || c == ';')
            .collect();
        for path in FIXED_PATHS {
            assert!(listed.contains(&path), "{path} is not in the 404's list");
        }
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
