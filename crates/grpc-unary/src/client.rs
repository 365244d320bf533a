//! The client: where calls go, the connection kept open and reused, the wait after a
//! server's misbehaviour, the name lookup bounded by the call's deadline.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::h2::{self, Connection, Io};
use crate::{Error, Reply, Secrets, TlsConfig, reply, tls};

/// How long a connection attempt may take (within the call's deadline): a server that
/// is down costs milliseconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The deadline of a call whose timeout is too large for the clock (a day: in effect,
/// none).
const FAR: Duration = Duration::from_secs(24 * 3600);
/// The wait before a new connection after one closed for the server's misbehaviour.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest such wait (it doubles after each such close).
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the calls go: `http://host:port` (cleartext HTTP/2 with prior knowledge) or
/// `https://host:port` (TLS, ALPN h2). An endpoint's path is not used: with gRPC the
/// method names the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// A name, or an IP address (without the brackets of an IPv6 one).
    pub host: String,
    pub port: u16,
}

impl Target {
    /// An endpoint URL's scheme (`http`, `https`; none is `http`), host and port (the
    /// scheme's default if none: 80 or 443).
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| format!("{endpoint} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") | None => false,
            Some(other) => return Err(format!("{other}:// is not supported (http or https)")),
        };
        if tls && !cfg!(feature = "tls") {
            return Err("https:// needs the tls feature, which this build lacks".into());
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{endpoint} has no host"))?;
        // An IPv6 address without its brackets.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target { tls, host, port })
    }

    /// `host:port`, an IPv6 address in brackets: the calls' `:authority`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One unary call.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The method: `/package.Service/Method`.
    pub path: &'a str,
    /// Custom metadata (lowercase names), sent as given after `content-type:
    /// application/grpc`, `te: trailers`, `grpc-timeout` and `grpc-encoding`: none of
    /// the names [`reserved`] says.
    pub metadata: &'a [(&'a str, &'a [u8])],
    /// The request message, serialized (and compressed, with `encoding`).
    pub message: &'a [u8],
    /// The message's compression (`gzip`, say), sent as `grpc-encoding`, the message
    /// flagged compressed; None for a message as it is.
    pub encoding: Option<&'a str>,
    /// Everything, from the name lookup to the reply's last byte, is done within this
    /// (sent as `grpc-timeout`, in milliseconds).
    pub timeout: Duration,
    /// Values never to be shown: replaced in the reply's message
    /// ([`Secrets::scrub`]).
    pub secrets: &'a Secrets,
}

/// Whether a metadata field of this name is to be left out of a call: the call sets it
/// itself (`content-type`, `te`, `grpc-timeout`), it means nothing in gRPC
/// (`content-encoding`, `content-length`), or HTTP/2 forbids it (`connection`,
/// `keep-alive`, `transfer-encoding`, `upgrade`, `host`).
pub fn reserved(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-encoding"
            | "content-length"
            | "te"
            | "grpc-timeout"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// A gRPC client of one server, for one call at a time (calls from several threads
/// wait for each other): one connection kept open and reused; after GOAWAY, a broken
/// connection or a protocol error, the next call opens a new one.
pub struct Client {
    target: Target,
    authority: String,
    tls: Option<TlsConfig>,
    connection: Mutex<Slot>,
}

impl Client {
    /// The client of `target`; `tls` is used for an `https://` one, and needed.
    pub fn new(target: Target, tls: Option<TlsConfig>) -> Result<Client, String> {
        if target.tls && tls.is_none() {
            return Err("https:// needs a TLS configuration".into());
        }
        Ok(Client {
            authority: target.authority(),
            target,
            tls,
            connection: Mutex::new(Slot::default()),
        })
    }

    /// The server's `host:port`, as calls name it.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends one call and reads its reply, within `call.timeout`. A call the server
    /// did not process (GOAWAY before its stream), or one that finds a reused
    /// connection closed, is sent once more at once on a new connection, within the
    /// same deadline.
    pub fn call(&self, call: &Call) -> Result<Reply, Error> {
        let now = Instant::now();
        let deadline = now.checked_add(call.timeout).unwrap_or(now + FAR);
        let Ok(len) = u32::try_from(call.message.len()) else {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "a message larger than 4 GiB");
            return Err(e.into());
        };
        let mut message = Vec::with_capacity(call.message.len() + 5);
        message.push(u8::from(call.encoding.is_some()));
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(call.message);
        let grpc_timeout = format!("{}m", call.timeout.as_millis().clamp(1, 99_999_999));
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"application/grpc"),
            ("te", b"trailers"),
            ("grpc-timeout", grpc_timeout.as_bytes()),
        ];
        if let Some(encoding) = call.encoding {
            headers.push(("grpc-encoding", encoding.as_bytes()));
        }
        headers.extend_from_slice(call.metadata);
        let request = h2::Request {
            scheme: if self.target.tls { "https" } else { "http" },
            authority: &self.authority,
            path: call.path,
            headers: &headers,
            body: &message,
        };
        reply::decode(self.send(&request, deadline)?, call.secrets)
    }

    /// Sends `request` on the open connection, or on a new one (unless backing off).
    fn send(&self, request: &h2::Request, deadline: Instant) -> Result<h2::Response, Error> {
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let mut again = true;
        loop {
            let (mut connection, reused) = match slot.connection.take().filter(|c| c.usable()) {
                Some(connection) => (connection, true),
                None => {
                    if let Some(left) = slot.waiting() {
                        return Err(Error::BackingOff(left));
                    }
                    let connection = self.connect(deadline).inspect_err(|e| slot.after(e))?;
                    (Box::new(connection), false)
                }
            };
            let result = connection.request(request, deadline);
            if connection.usable() {
                slot.connection = Some(connection);
            }
            match &result {
                Ok(_) => slot.replied(),
                Err(e) => slot.after(e),
            }
            match result {
                Err(e) if again && (not_processed(&e) || reused && closed(&e)) => again = false,
                result => return result,
            }
        }
    }

    fn connect(&self, deadline: Instant) -> Result<Connection<Box<dyn Io>>, Error> {
        let addrs = lookup(&self.target.host, self.target.port, deadline)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut).into());
            }
            match TcpStream::connect_timeout(&addr, left.min(CONNECT_TIMEOUT)) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let io: Box<dyn Io> = match &self.tls {
                        Some(config) => tls::connect(tcp, &self.target.host, config, deadline)?,
                        None => Box::new(tcp),
                    };
                    return Connection::handshake(io, deadline);
                }
                Err(e) => last = e,
            }
        }
        Err(last.into())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Client").field(&self.authority).finish()
    }
}

impl Io for Box<dyn Io> {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        (**self).set_timeout(timeout)
    }

    fn close_write(&mut self) -> io::Result<()> {
        (**self).close_write()
    }
}

/// The connection of a client, and when the next may be opened.
#[derive(Debug)]
struct Slot {
    connection: Option<Box<Connection<Box<dyn Io>>>>,
    /// No new connection before then (the last was closed for the server's
    /// misbehaviour).
    closed_until: Option<Instant>,
    /// The wait after the next such close.
    backoff: Duration,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            connection: None,
            closed_until: None,
            backoff: BACKOFF_FIRST,
        }
    }
}

impl Slot {
    /// How long before a new connection may be opened, if at all.
    fn waiting(&self) -> Option<Duration> {
        let until = self.closed_until?;
        Some(until.saturating_duration_since(Instant::now())).filter(|left| !left.is_zero())
    }

    /// After a call that failed with `error`: a connection closed for the server's
    /// misbehaviour starts a wait, twice as long as the last.
    fn after(&mut self, error: &Error) {
        if error.misbehaved() {
            let now = Instant::now();
            self.closed_until = Some(now.checked_add(self.backoff).unwrap_or(now));
            self.backoff = self.backoff.saturating_mul(2).min(BACKOFF_MAX);
        }
    }

    /// After a reply: no wait.
    fn replied(&mut self) {
        self.closed_until = None;
        self.backoff = BACKOFF_FIRST;
    }
}

/// The addresses of `host`: an IP address as it is; a name looked up on a helper
/// thread, so that a resolver that does not answer costs no more than the deadline
/// (a lookup runs only when a connection is opened).
fn lookup(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = format!("{host}:{port}");
    let caller = thread::current();
    let answer: Arc<Mutex<Option<io::Result<Vec<SocketAddr>>>>> = Arc::default();
    let told = answer.clone();
    thread::Builder::new()
        .name("grpc-lookup".into())
        .spawn(move || {
            let addrs = name.to_socket_addrs().map(Vec::from_iter);
            *told.lock().unwrap_or_else(|e| e.into_inner()) = Some(addrs);
            caller.unpark();
        })?;
    loop {
        if let Some(addrs) = answer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return addrs;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Left to finish on its own.
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "name lookup timed out",
            ));
        }
        thread::park_timeout(left);
    }
}

/// The server said it did not take the stream: safe to send again.
fn not_processed(e: &Error) -> bool {
    matches!(e, Error::Refused { .. })
}

/// The connection was found closed (a reused one the server had let go).
fn closed(e: &Error) -> bool {
    matches!(e, Error::Io(e) if matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://otel-collector:4317").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "otel-collector".into(),
                port: 4317
            }
        );
        assert_eq!(t.authority(), "otel-collector:4317");
        let t = Target::parse("http://[::1]:4317/v1/traces").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 4317));
        assert_eq!(t.authority(), "[::1]:4317");
        assert!(Target::parse("ftp://c:4317").is_err());
        if cfg!(feature = "tls") {
            assert_eq!(Target::parse("https://c").unwrap().port, 443);
            let https = Target::parse("https://c").unwrap();
            assert!(Client::new(https, None).is_err(), "https:// needs TLS");
        }
    }

    #[test]
    fn reserved_names_are_left_out() {
        for name in ["te", "content-type", "grpc-timeout", "host", "connection"] {
            assert!(reserved(name), "{name}");
        }
        for name in ["authorization", "x-tenant", "user-agent", "grpc-encoding"] {
            assert!(!reserved(name), "{name}");
        }
    }

    #[test]
    fn a_name_is_looked_up_within_the_deadline_and_an_address_as_it_is() {
        // Many times: the answer must not be missed, whichever thread runs first.
        for _ in 0..20 {
            let started = Instant::now();
            let addrs = lookup("localhost", 4317, started + Duration::from_secs(5)).unwrap();
            assert!(!addrs.is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        let addrs = lookup("127.0.0.1", 4317, Instant::now()).unwrap();
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 4317))]);
    }

    #[test]
    fn the_wait_after_a_misbehaving_server_doubles_to_its_cap_and_a_reply_ends_it() {
        let mut slot = Slot::default();
        assert_eq!(slot.waiting(), None);
        slot.after(&Error::Io(io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(slot.waiting(), None, "a server that is down: no wait");
        slot.after(&Error::Reset(7));
        assert_eq!(slot.waiting(), None);
        let mut waits = Vec::new();
        for _ in 0..8 {
            slot.after(&Error::Calm("a flood"));
            let left = slot.waiting().unwrap();
            waits.push(left.as_millis().div_ceil(1000));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        slot.replied();
        assert_eq!(slot.waiting(), None);
        slot.after(&Error::Protocol("bad"));
        assert!(slot.waiting().unwrap() <= BACKOFF_FIRST);
    }

    /// What a connection wrote, and whether it ended in a close (not a reset).
    type Seen = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

    /// A server on loopback that answers every connection with SETTINGS and a flood of
    /// PINGs, and keeps what each connection wrote, until it closed.
    fn flooding_server() -> (SocketAddr, Seen) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(mut socket) = socket else { return };
                let kept = kept.clone();
                thread::spawn(move || {
                    let mut flood = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
                    for _ in 0..1000 {
                        flood.extend([0, 0, 8, 6, 0, 0, 0, 0, 0]);
                        flood.extend(b"12345678");
                    }
                    let _ = socket.write_all(&flood);
                    socket
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let mut written = Vec::new();
                    let closed = socket.read_to_end(&mut written).is_ok();
                    kept.lock().unwrap().push((written, closed));
                });
            }
        });
        (addr, seen)
    }

    #[test]
    fn a_flooding_server_is_told_to_calm_down_and_not_reconnected_to_at_once() {
        let (addr, seen) = flooding_server();
        let target = Target::parse(&format!("http://{addr}")).unwrap();
        let client = Client::new(target, None).unwrap();
        let secrets = Secrets::default();
        let call = Call {
            path: "/svc/Export",
            metadata: &[],
            message: b"batch",
            encoding: None,
            timeout: Duration::from_secs(5),
            secrets: &secrets,
        };
        let first = client.call(&call).unwrap_err();
        assert!(matches!(first, Error::Calm(_)), "{first}");
        assert!(first.to_string().contains("ENHANCE_YOUR_CALM"), "{first}");
        let started = Instant::now();
        let second = client.call(&call).unwrap_err();
        assert!(matches!(second, Error::BackingOff(_)), "{second}");
        assert!(
            second.to_string().contains("not connecting again"),
            "{second}"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        // The one connection, closed with GOAWAY ENHANCE_YOUR_CALM, the last thing
        // written: our side ended after it, not reset (the server read to its end).
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(100));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];
        assert!(seen[0].0.ends_with(&goaway), "{:?}", seen[0]);
        assert!(seen[0].1, "closed, not reset");
    }
}
