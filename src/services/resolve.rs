//! Name resolution for the worker's agent (and the OTLP/HTTP exporter's), without a
//! thread per request.
//!
//! ureq's own resolver bounds a lookup by its timeout by running it on a new thread,
//! and it resolves before every request, even for an IP address and even when a pooled
//! connection is reused: two threads per order. [`Resolver`] takes an IP address as it
//! is, resolves a name once and keeps the answer for [`NAME_TTL`], and forgets it as
//! soon as reaching it fails. A lookup still runs on a helper thread so that it stays
//! bounded by `--timeout`, but only on a miss.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{self, DefaultResolver, ResolvedSocketAddrs};
use ureq::unversioned::transport::NextTimeout;
use ureq::{Error, Timeout};

/// How long a resolved name is used before it is looked up again: 30 s.
///
/// The system resolver does not tell how long an answer may be kept, so the worker picks
/// a fixed time. The services' names only move when a container or a Service is
/// replaced; 30 s is the positive cache time of the default Corefile of Kubernetes'
/// CoreDNS (`cache 30`), so the worker holds an answer no longer than the cluster's own
/// DNS may, while a busy drain still looks each name up about twice a minute instead of
/// twice per order. An address that stops answering is dropped at once anyway
/// ([`Resolver::forget`]).
pub const NAME_TTL: Duration = Duration::from_secs(30);

/// An I/O error met before any byte of a request left (the lookup's thread could not
/// be made, a socket could not be opened, the connection could not be made): whatever
/// its kind, the request was not sent. The transport tells it apart from an error after
/// the connection was made by this wrapper ([`before_sending`], [`unsent_cause`]).
#[derive(Debug)]
struct BeforeSending(io::Error);

impl fmt::Display for BeforeSending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BeforeSending {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// `error`, marked as met before the request was sent (its kind kept).
pub fn before_sending(error: io::Error) -> io::Error {
    io::Error::new(error.kind(), BeforeSending(error))
}

/// The error itself, when `error` was marked by [`before_sending`].
pub fn unsent_cause(error: &io::Error) -> Option<&io::Error> {
    error
        .get_ref()?
        .downcast_ref::<BeforeSending>()
        .map(|b| &b.0)
}

/// A name lookup: `"host:port"` to its addresses.
type Lookup = dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// A ureq resolver that uses IP addresses as they are and keeps resolved names for
/// [`NAME_TTL`]. Clones share one cache, so the agent's copy and the one kept to
/// [`forget`](Resolver::forget) a name are the same.
///
/// Failed lookups are not kept: each request for a name that does not resolve looks it
/// up again. ureq's `ip_family` setting is honoured (on the cached answer, at each request).
#[derive(Clone)]
pub struct Resolver {
    shared: Arc<Shared>,
}

struct Shared {
    lookup: Box<Lookup>,
    ttl: Duration,
    /// `"host:port"` to its addresses and when they expire.
    names: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    addrs: Arc<[SocketAddr]>,
    expires: Instant,
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::with_lookup(NAME_TTL, |host_port| {
            Ok(host_port.to_socket_addrs()?.collect())
        })
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system resolver ([`ToSocketAddrs`]: `/etc/hosts`, then DNS) with [`NAME_TTL`].
    pub fn new() -> Resolver {
        Resolver::default()
    }

    /// The system resolver keeping answers for `ttl` instead (for tests).
    pub fn with_ttl(ttl: Duration) -> Resolver {
        Resolver::with_lookup(ttl, |host_port| Ok(host_port.to_socket_addrs()?.collect()))
    }

    /// How long answers are kept.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// When the answer kept for `uri`'s host expires, if one is kept (never for an IP
    /// address, which is not looked up).
    pub fn expires(&self, uri: &Uri) -> Option<Instant> {
        let host_port = DefaultResolver::host_and_port(uri.scheme()?, uri.authority()?)?;
        self.shared
            .names()
            .get(&host_port)
            .map(|entry| entry.expires)
    }

    /// A resolver with its own lookup and time to keep answers.
    fn with_lookup(
        ttl: Duration,
        lookup: impl Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver {
            shared: Arc::new(Shared {
                lookup: Box::new(lookup),
                ttl,
                names: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Drops what is kept for `host` (as in a URL: a name, or `[v6]`), on any port, so
    /// that the next request looks it up again. Called when a service's request could
    /// not be sent, and when an export fails at all: the name may have moved.
    pub fn forget(&self, host: &str) {
        self.shared
            .names()
            .retain(|host_port, _| host_of(host_port) != host);
    }

    /// The addresses of `host_port`: kept ones while fresh at `now`, else a lookup
    /// bounded by `timeout` (`None`: unbounded, on this thread).
    fn addrs(
        &self,
        host_port: &str,
        timeout: Option<Duration>,
        now: Instant,
    ) -> Result<Arc<[SocketAddr]>, Error> {
        if let Some(entry) = self.shared.names().get(host_port)
            && now < entry.expires
        {
            return Ok(entry.addrs.clone());
        }
        let found = match timeout {
            None => self.shared.look_up(host_port, now),
            Some(timeout) => {
                let (tx, rx) = mpsc::sync_channel(1);
                let shared = self.shared.clone();
                let name = host_port.to_owned();
                thread::Builder::new()
                    .name("resolve".into())
                    .spawn(move || {
                        // The caller may have stopped waiting: nobody to tell, but the
                        // answer is kept for the next request all the same.
                        let _ = tx.send(shared.look_up(&name, now));
                    })
                    .map_err(|e| Error::Io(before_sending(e)))?;
                match rx.recv_timeout(timeout) {
                    Ok(found) => found,
                    // Whichever budget ran out (resolve, or the whole call's), the
                    // request never left: say so, so that it counts as not sent.
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        return Err(Error::Timeout(Timeout::Resolve));
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        found.ok_or(Error::HostNotFound)
    }

    /// Whether an answer for `host_port` is kept, fresh or not (for tests).
    #[cfg(test)]
    pub(crate) fn is_kept(&self, host_port: &str) -> bool {
        self.shared.names().contains_key(host_port)
    }
}

impl Shared {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent whatever panicked while holding it.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `host_port` up and keeps a non-empty answer until `started` plus the TTL.
    fn look_up(&self, host_port: &str, started: Instant) -> Option<Arc<[SocketAddr]>> {
        let addrs: Arc<[SocketAddr]> = match (self.lookup)(host_port) {
            Ok(addrs) if !addrs.is_empty() => addrs.into(),
            Ok(_) => {
                log::debug!("{host_port} resolved to no address");
                return None;
            }
            Err(e) => {
                log::debug!("{host_port} not resolved: {e}");
                return None;
            }
        };
        log::debug!("{host_port} resolved to {addrs:?}");
        let expires = started + self.ttl;
        let mut names = self.names();
        names.retain(|_, entry| entry.expires > started);
        names.insert(
            host_port.to_owned(),
            Entry {
                addrs: addrs.clone(),
                expires,
            },
        );
        Some(addrs)
    }
}

/// The host part of `"host:port"` (`[v6]` keeps its brackets, as in a URL).
fn host_of(host_port: &str) -> &str {
    host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host)
}

impl resolver::Resolver for Resolver {
    /// An IP address (`127.0.0.1`, `[::1]`) is returned with its port at once; a name
    /// comes from what is kept, else from a lookup bounded by `timeout`. A lookup that
    /// fails or finds no address (of the configured IP family) is
    /// [`Error::HostNotFound`], one that outlasts `timeout` is
    /// `Error::Timeout(Timeout::Resolve)`.
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(Error::BadUri(format!("{uri}: not a full URL")));
        };
        let Some(host_port) = DefaultResolver::host_and_port(scheme, authority) else {
            return Err(Error::BadUri(format!("unknown scheme: {scheme}")));
        };
        let found = match host_port.parse::<SocketAddr>() {
            Ok(addr) => Arc::from([addr]),
            Err(_) => {
                let bound = (!timeout.after.is_not_happening()).then(|| *timeout.after);
                self.addrs(&host_port, bound, Instant::now())?
            }
        };
        let mut addrs = self.empty();
        for addr in config.ip_family().keep_wanted(found.iter().copied()) {
            if addrs.try_push(addr).is_err() {
                break;
            }
        }
        if addrs.is_empty() {
            return Err(Error::HostNotFound);
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ureq::config::IpFamily;
    use ureq::unversioned::resolver::Resolver as _;
    use ureq::unversioned::transport::time;

    use super::*;

    const LOOPBACK: &str = "127.0.0.1:5000";

    /// A resolver whose lookups answer `answer` and are counted.
    fn counted(
        answer: impl Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> (Resolver, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let resolver = Resolver::with_lookup(NAME_TTL, move |host_port| {
            counter.fetch_add(1, Ordering::SeqCst);
            answer(host_port)
        });
        (resolver, calls)
    }

    fn loopback(_: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![LOOPBACK.parse().unwrap()])
    }

    fn within(limit: std::time::Duration) -> NextTimeout {
        NextTimeout {
            after: time::Duration::Exact(limit),
            reason: Timeout::Resolve,
            ..NextTimeout::default()
        }
    }

    fn resolve(resolver: &Resolver, url: &str) -> Result<Vec<SocketAddr>, Error> {
        resolve_with(resolver, url, &Config::default())
    }

    fn resolve_with(
        resolver: &Resolver,
        url: &str,
        config: &Config,
    ) -> Result<Vec<SocketAddr>, Error> {
        let uri: Uri = url.parse().unwrap();
        let addrs = resolver.resolve(&uri, config, within(Duration::from_secs(5)))?;
        Ok(addrs.to_vec())
    }

    #[test]
    fn an_ip_address_is_used_as_it_is() {
        let (resolver, calls) = counted(|_| panic!("an IP address needs no lookup"));
        let v4 = resolve(&resolver, "http://127.0.0.1:5000/orders").unwrap();
        assert_eq!(v4, [LOOPBACK.parse().unwrap()]);
        let v6 = resolve(&resolver, "http://[::1]:5001").unwrap();
        assert_eq!(v6, ["[::1]:5001".parse().unwrap()]);
        let default_port = resolve(&resolver, "http://127.0.0.1/").unwrap();
        assert_eq!(default_port, ["127.0.0.1:80".parse().unwrap()]);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(resolver.shared.names().is_empty());
    }

    #[test]
    fn localhost_is_looked_up_once_then_kept() {
        let (resolver, calls) = counted(|host_port| Ok(host_port.to_socket_addrs()?.collect()));
        let first = resolve(&resolver, "http://localhost:5000/orders").unwrap();
        assert!(!first.is_empty());
        assert!(
            first
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 5000)
        );
        let second = resolve(&resolver, "http://localhost:5000/stocks").unwrap();
        assert_eq!(second, first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another port is another entry.
        resolve(&resolver, "http://localhost:5001").unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_kept_answer_expires_after_the_ttl() {
        let (resolver, calls) = counted(loopback);
        let t0 = Instant::now();
        resolver.addrs("shop:5000", None, t0).unwrap();
        resolver
            .addrs("shop:5000", None, t0 + NAME_TTL - Duration::from_millis(1))
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        resolver.addrs("shop:5000", None, t0 + NAME_TTL).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The new answer is kept from the time it was looked up.
        resolver
            .addrs(
                "shop:5000",
                None,
                t0 + NAME_TTL * 2 - Duration::from_millis(1),
            )
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn forget_drops_every_port_of_a_host_only() {
        let (resolver, calls) = counted(loopback);
        let now = Instant::now();
        for host_port in ["shop:5000", "shop:5001", "stock:5001"] {
            resolver.addrs(host_port, None, now).unwrap();
        }
        resolver.forget("shop");
        assert!(!resolver.is_kept("shop:5000"));
        assert!(!resolver.is_kept("shop:5001"));
        assert!(resolver.is_kept("stock:5001"));
        resolver.addrs("shop:5000", None, now).unwrap();
        resolver.addrs("stock:5001", None, now).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_slow_lookup_is_cut_at_the_timeout_and_its_late_answer_kept() {
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let (resolver, calls) = counted(move |host_port| {
            // Bounded, so a failing test leaves no thread behind for long.
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(5));
            loopback(host_port)
        });
        let uri: Uri = "http://slow.example:5000".parse().unwrap();
        let started = Instant::now();
        let result = resolver.resolve(&uri, &Config::default(), within(Duration::from_millis(50)));
        let waited = started.elapsed();
        assert!(
            matches!(result, Err(Error::Timeout(Timeout::Resolve))),
            "{result:?}"
        );
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");

        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !resolver.is_kept("slow.example:5000") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let addrs = resolver.resolve(&uri, &Config::default(), within(Duration::from_millis(50)));
        assert_eq!(addrs.unwrap().to_vec(), [LOOPBACK.parse().unwrap()]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn no_address_is_host_not_found_and_not_kept() {
        let (resolver, calls) = counted(|_| Ok(Vec::new()));
        let result = resolve(&resolver, "http://nowhere:5000");
        assert!(matches!(result, Err(Error::HostNotFound)), "{result:?}");
        let (failing, _) = counted(|_| Err(io::Error::other("Name or service not known")));
        let result = resolve(&failing, "http://nowhere:5000");
        assert!(matches!(result, Err(Error::HostNotFound)), "{result:?}");
        resolve(&resolver, "http://nowhere:5000").unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_configured_ip_family_is_kept() {
        let (resolver, calls) = counted(|_| {
            Ok(vec![
                "[::1]:5000".parse().unwrap(),
                LOOPBACK.parse().unwrap(),
            ])
        });
        let v4_only = ureq::Agent::config_builder()
            .ip_family(IpFamily::Ipv4Only)
            .build();
        let v6_only = ureq::Agent::config_builder()
            .ip_family(IpFamily::Ipv6Only)
            .build();
        let addrs = resolve_with(&resolver, "http://shop:5000", &v4_only).unwrap();
        assert_eq!(addrs, [LOOPBACK.parse().unwrap()]);
        let addrs = resolve_with(&resolver, "http://shop:5000", &v6_only).unwrap();
        assert_eq!(addrs, ["[::1]:5000".parse().unwrap()]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let result = resolve_with(&resolver, "http://[::1]:5000", &v4_only);
        assert!(matches!(result, Err(Error::HostNotFound)), "{result:?}");
    }
}
