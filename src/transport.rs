//! A client connection's byte stream, plain TCP or TLS, and the server's certificate.
//!
//! hyper serves a [`Transport`]; after a WebSocket upgrade the session [`split`]s it into the
//! [`ReadHalf`] it reads and the [`WriteHalf`] the writer task owns. A plain socket splits
//! into tokio's owned halves (no lock, `writev` straight to the socket); a TLS stream has
//! one rustls state for both directions, so its halves share it behind a mutex, each
//! locking only for the poll that reads or writes. Writes and flushes never read, and reads
//! write only the alert that ends a connection whose input is broken, so each half's waker
//! stays in its own readiness slot of the socket (the one exception ends the session, which
//! wakes the writer anyway). A write may leave encrypted records in rustls when the socket
//! is full: [`WriteHalf::buffered`] tells the writer to flush them.
//!
//! [`ServerTls`] holds the certificate and key (`CHAT_TLS_CERT_FILE`, `CHAT_TLS_KEY_FILE`),
//! read at start-up and again on [`ServerTls::reload`] (SIGHUP): a new handshake uses what
//! was loaded last; established connections keep the session they have.
//!
//! [`split`]: Transport::split

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

/// A client's connection as hyper serves it.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: the rustls state is a few hundred bytes the plain case should not carry.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The side of a split connection the session reads.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(Shared),
}

/// The side of a split connection the writer task writes.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(Shared),
}

/// A TLS stream both halves use, one poll at a time.
pub struct Shared(Arc<Mutex<TlsStream<TcpStream>>>);

impl Transport {
    /// The two halves of an upgraded connection.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (ReadHalf::Plain(rd), WriteHalf::Plain(wr))
            }
            Transport::Tls(tls) => {
                let shared = Arc::new(Mutex::new(*tls));
                (ReadHalf::Tls(Shared(shared.clone())), WriteHalf::Tls(Shared(shared)))
            }
        }
    }
}

/// Resets the connection (`SO_LINGER` 0): the kernel drops what it still holds for the
/// client at once instead of keeping it for as long as the client stays silent.
fn reset(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

impl ReadHalf {
    /// See [`reset`].
    pub fn reset(&self) {
        match self {
            ReadHalf::Plain(rd) => reset(rd.as_ref()),
            ReadHalf::Tls(s) => reset(s.0.lock().get_ref().0),
        }
    }
}

impl WriteHalf {
    /// Whether output written is still held above the socket (TLS records rustls has
    /// encrypted but the socket has not taken): then a flush is owed before waiting.
    pub fn buffered(&self) -> bool {
        match self {
            WriteHalf::Plain(_) => false,
            WriteHalf::Tls(s) => s.0.lock().get_ref().1.wants_write(),
        }
    }

    /// See [`reset`].
    pub fn reset(&self) {
        match self {
            WriteHalf::Plain(wr) => reset(wr.as_ref()),
            WriteHalf::Tls(s) => reset(s.0.lock().get_ref().0),
        }
    }
}

/// `AsyncRead` for an enum whose variants all implement it (and are `Unpin`).
macro_rules! read_by_variant {
    ($ty:ident, $($variant:ident => $via:expr),+) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(io) => $via(io, |io: Pin<&mut _>| io.poll_read(cx, buf)),)+
                }
            }
        }
    };
}

/// `AsyncWrite`, the same way (vectored writes included).
macro_rules! write_by_variant {
    ($ty:ident, $($variant:ident => $via:expr),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(io) => $via(io, |io: Pin<&mut _>| io.poll_write(cx, buf)),)+
                }
            }

            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(io) => $via(io, |io: Pin<&mut _>| io.poll_write_vectored(cx, bufs)),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(io) => $via(io, |io: Pin<&mut _>| io.poll_flush(cx)),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(io) => $via(io, |io: Pin<&mut _>| io.poll_shutdown(cx)),)+
                }
            }
        }
    };
}

/// Polls an owned `Unpin` I/O object.
fn owned<T: Unpin, R>(io: &mut T, poll: impl FnOnce(Pin<&mut T>) -> R) -> R {
    poll(Pin::new(io))
}

/// Polls a boxed one.
fn boxed<T: Unpin, R>(io: &mut Box<T>, poll: impl FnOnce(Pin<&mut T>) -> R) -> R {
    poll(Pin::new(&mut **io))
}

/// Polls the shared TLS stream, holding its lock for that poll only.
fn locked<R>(io: &mut Shared, poll: impl FnOnce(Pin<&mut TlsStream<TcpStream>>) -> R) -> R {
    poll(Pin::new(&mut *io.0.lock()))
}

read_by_variant!(Transport, Plain => owned, Tls => boxed);
write_by_variant!(Transport, Plain => owned, Tls => boxed);
read_by_variant!(ReadHalf, Plain => owned, Tls => locked);
write_by_variant!(WriteHalf, Plain => owned, Tls => locked);

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("certificate and key do not make a server identity: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's TLS identity; see the module documentation.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl ServerTls {
    /// Reads the PEM certificate chain (leaf first) and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let acceptor = RwLock::new(acceptor(cert, key)?);
        Ok(ServerTls { cert: cert.to_owned(), key: key.to_owned(), acceptor })
    }

    /// Reads both files again. On error the identity loaded before stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self.acceptor.write() = fresh;
        Ok(())
    }

    /// What the next handshake uses.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| TlsError::Read { path, reason: e.to_string() }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read_err(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        path: key.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (encrypted keys are not supported)".into()
            }
            e => e.to_string(),
        },
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let e = ServerTls::load(&cert, &key).unwrap_err();
        assert!(matches!(&e, TlsError::Read { path, .. } if *path == cert), "{e}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = ServerTls::load(&cert, &key).unwrap_err();
        assert!(matches!(&e, TlsError::NoCertificate(path) if *path == cert), "{e}");
    }
}
