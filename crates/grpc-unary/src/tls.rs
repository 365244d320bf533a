//! TLS for `https://` targets: rustls (ring) with ALPN `h2`, behind the `tls` feature.

#[cfg(feature = "tls")]
pub use with::{TlsConfig, connect};
#[cfg(not(feature = "tls"))]
pub use without::{TlsConfig, connect};

#[cfg(feature = "tls")]
mod with {
    use std::io::{self, Read, Write};
    use std::net::TcpStream;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use crate::Error;
    use crate::h2::Io;

    struct Tls(StreamOwned<ClientConnection, TcpStream>);

    impl Read for Tls {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Tls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Io for Tls {
        fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
            self.0.sock.set_timeout(timeout)
        }

        /// close_notify, then the TCP side.
        fn close_write(&mut self) -> io::Result<()> {
            self.0.conn.send_close_notify();
            self.0.flush()?;
            self.0.sock.close_write()
        }
    }

    /// How `https://` targets are reached: rustls with ring, TLS 1.2 and 1.3, offering
    /// only h2 (ALPN), the server's certificate checked against a set of roots.
    #[derive(Debug, Clone)]
    pub struct TlsConfig(Arc<ClientConfig>);

    impl TlsConfig {
        /// The roots of the PEM file `ca_file` (its CERTIFICATE blocks), or without
        /// one the bundled Mozilla roots (webpki-roots), so that no CA file is needed.
        pub fn new(ca_file: Option<&Path>) -> Result<TlsConfig, String> {
            let roots = match ca_file {
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
                Some(file) => {
                    let path = file.display();
                    let mut roots = RootCertStore::empty();
                    let pem = std::fs::read_to_string(file)
                        .map_err(|e| format!("certificate {path}: {e}"))?;
                    for der in pem_certificates(&pem) {
                        let der = der.ok_or_else(|| format!("certificate {path}: bad PEM"))?;
                        roots
                            .add(CertificateDer::from(der))
                            .map_err(|e| format!("certificate {path}: {e}"))?;
                    }
                    if roots.is_empty() {
                        return Err(format!("certificate {path}: no certificate in it"));
                    }
                    roots
                }
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(TlsConfig(Arc::new(config)))
        }
    }

    /// The DER of each CERTIFICATE block of a PEM text (None for one that does not
    /// decode); other blocks are skipped.
    fn pem_certificates(pem: &str) -> impl Iterator<Item = Option<Vec<u8>>> + '_ {
        pem.split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .map(|block| {
                let body = block.split("-----END CERTIFICATE-----").next()?;
                let text: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                crate::reply::base64_decode(&text)
            })
    }

    /// A TLS session on `tcp`, its handshake done by `deadline`, with h2 agreed.
    pub fn connect(
        mut tcp: TcpStream,
        host: &str,
        config: &TlsConfig,
        deadline: Instant,
    ) -> Result<Box<dyn Io>, Error> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Error::Protocol("not a TLS server name"))?;
        let mut session = ClientConnection::new(config.0.clone(), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        while session.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut).into());
            }
            tcp.set_timeout(left)?;
            session.complete_io(&mut tcp).map_err(timed_out)?;
        }
        if session.alpn_protocol() != Some(b"h2") {
            return Err(Error::Protocol(
                "the server did not agree to h2 over TLS (ALPN)",
            ));
        }
        Ok(Box::new(Tls(StreamOwned::new(session, tcp))))
    }

    /// A socket timeout reads as WouldBlock on Unix: say TimedOut.
    fn timed_out(e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::from(io::ErrorKind::TimedOut)
        } else {
            e
        }
    }
}

#[cfg(not(feature = "tls"))]
mod without {
    use std::convert::Infallible;
    use std::net::TcpStream;
    use std::path::Path;
    use std::time::Instant;

    use crate::Error;
    use crate::h2::Io;

    /// How `https://` targets are reached: never, in a build without the `tls`
    /// feature ([`TlsConfig::new`] says so).
    #[derive(Debug, Clone)]
    pub struct TlsConfig(Infallible);

    impl TlsConfig {
        /// Always an error: this build has no TLS.
        pub fn new(_: Option<&Path>) -> Result<TlsConfig, String> {
            Err("https:// needs the tls feature, which this build lacks".into())
        }
    }

    /// Never called: there is no [`TlsConfig`].
    pub fn connect(_: TcpStream, _: &str, c: &TlsConfig, _: Instant) -> Result<Box<dyn Io>, Error> {
        match c.0 {}
    }
}
