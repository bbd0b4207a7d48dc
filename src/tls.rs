//! TLS termination (DESIGN section 9): the `[tls]` and `[admin_tls]`
//! tables, certificates and keys read from PEM and checked, and the rustls
//! server configs the listeners hand every handshake to.
//!
//! ```text
//!  [tls] / [admin_tls] ─▶ read PEM ─▶ check ─────────────────────▶ rustls ServerConfig
//!  (FileTls)              (file named  (a chain, a key that matches   (TLS 1.2 + 1.3, ring,
//!                          in errors)   its certificate, all in date)   ALPN h2 + http/1.1,
//!                                                                        SNI choice, mTLS)
//! ```
//!
//! [`build`] does it all before anything is served, at start-up and on
//! every reload (`crate::reload`), so a certificate that cannot be used is
//! refused with its file named and the running one stays. The listeners
//! (`crate::server`) run the handshake under the connection's first-head
//! deadline, then serve the decrypted stream exactly as a plain one.
//!
//! Paths are relative to the working directory, as `store.url`'s SQLite
//! path is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

/// The ALPN protocols both listeners offer, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// `[tls]` and `[admin_tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain, leaf first: served when no `sni` entry
    /// matches the name the client asked for (or it asked for none).
    pub cert_file: String,
    /// PEM private key of `cert_file`'s leaf (PKCS#8, SEC1 or RSA).
    pub key_file: String,
    /// `[[tls.sni]]`: more certificates, chosen by the client's SNI name.
    #[serde(default)]
    pub sni: Vec<FileSni>,
    /// `[admin_tls]` only: PEM CA certificate(s); when set, callers need a
    /// client certificate issued by one of them (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

/// `[[tls.sni]]`: a certificate for one server name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSni {
    /// `api.example.com`, or `*.example.com` for any one label in front
    /// of `example.com`. An exact name wins over a wildcard.
    pub server_name: String,
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key of its leaf.
    pub key_file: String,
}

/// A `[tls]` or `[admin_tls]` table that cannot be used: the dotted key
/// and what is wrong, naming the file (`crate::config` adds the config
/// file in front).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// Dotted key, e.g. `tls.sni[1].key_file`.
    pub key: String,
    /// What is wrong, with the certificate or key file named.
    pub message: String,
}

/// A validated `[tls]` / `[admin_tls]`: the rustls config every handshake
/// on the listener uses, built from files read at validation time.
#[derive(Clone)]
pub struct TlsSettings {
    /// Handed to `tokio_rustls::TlsAcceptor`.
    pub server: Arc<ServerConfig>,
    /// Every file it was built from, for logs.
    pub files: Vec<PathBuf>,
    /// Whether callers must present a client certificate.
    pub client_auth: bool,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("files", &self.files)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

impl PartialEq for TlsSettings {
    /// The same files and client auth: what decides whether a reload
    /// changes a listener's mode (the certificates themselves may differ).
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.client_auth == other.client_auth
    }
}

/// The crypto every TLS config of the gateway uses: ring, as the upstream
/// client does (no cmake/NASM toolchain).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// TLS 1.3 session tickets sent after each handshake.
const TICKETS_PER_HANDSHAKE: usize = 1;

/// The session-ticket key for `table`'s listener.
///
/// `[tls]` (the public listener, which never asks for a client
/// certificate): one key per process, kept across reloads so that clients
/// resume sessions after a certificate rotation as before (rustls rotates
/// the key itself every few hours).
///
/// `[admin_tls]`: a key of its own, new with each build of its config. A
/// resumed session skips the client-certificate check, so a ticket the
/// public listener gave a client without a certificate must not open the
/// admin listener, and neither may a ticket from before a reload that set
/// or changed `client_ca_file`. Admin clients make a full handshake after
/// a reload; that is all it costs.
///
/// `None` when the system could not give it randomness; sessions are then
/// resumed from the per-config cache only (one per build as well).
fn ticketer(table: &str) -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    static PUBLIC: OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> = OnceLock::new();
    let fresh = || rustls::crypto::ring::Ticketer::new().ok();
    match table {
        "tls" => PUBLIC.get_or_init(fresh).clone(),
        _ => fresh(),
    }
}

/// Reads and checks `[tls]` (`table` = `"tls"`) or `[admin_tls]`
/// (`"admin_tls"`) into a rustls config: TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`, the certificate chosen by SNI, client certificates demanded
/// when `client_ca_file` is set (allowed only in `[admin_tls]`).
pub fn build(table: &str, f: &FileTls) -> Result<TlsSettings, TlsError> {
    let key = |k: &str| format!("{table}.{k}");
    let mut files = vec![PathBuf::from(&f.cert_file), PathBuf::from(&f.key_file)];
    let default = certified_key(
        &key("cert_file"),
        &f.cert_file,
        &key("key_file"),
        &f.key_file,
    )?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (i, s) in f.sni.iter().enumerate() {
        let key = |k: &str| format!("{table}.sni[{i}].{k}");
        let name = sni_name(&key("server_name"), &s.server_name)?;
        let certified = certified_key(
            &key("cert_file"),
            &s.cert_file,
            &key("key_file"),
            &s.key_file,
        )?;
        if !covers(&certified, &name) {
            return Err(TlsError {
                key: key("cert_file"),
                message: format!(
                    "{}: the certificate is not for {name} (server_name): a client asking for it \
                     would refuse the handshake",
                    s.cert_file
                ),
            });
        }
        let map = match name.strip_prefix("*.") {
            Some(_) => &mut wildcard,
            None => &mut exact,
        };
        let stem = name.strip_prefix("*.").unwrap_or(&name).to_string();
        if map.insert(stem, Arc::new(certified)).is_some() {
            return Err(TlsError {
                key: key("server_name"),
                message: format!("{:?} is listed twice", s.server_name),
            });
        }
        files.push(PathBuf::from(&s.cert_file));
        files.push(PathBuf::from(&s.key_file));
    }
    let resolver = Arc::new(SniResolver {
        default: Arc::new(default),
        exact,
        wildcard,
    });

    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            key: table.to_string(),
            message: format!("cannot set up TLS: {e}"),
        })?;
    let client_auth = f.client_ca_file.is_some();
    let mut server = match &f.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(_) if table == "tls" => {
            return Err(TlsError {
                key: key("client_ca_file"),
                message: "client certificates are asked for on the admin listener only \
                          ([admin_tls])"
                    .into(),
            })
        }
        Some(ca_file) => {
            let ca_key = key("client_ca_file");
            let mut roots = RootCertStore::empty();
            for ca in read_certificates(&ca_key, ca_file)? {
                roots.add(ca).map_err(|e| TlsError {
                    key: ca_key.clone(),
                    message: format!("{ca_file}: not a usable CA certificate: {e}"),
                })?;
            }
            files.push(PathBuf::from(ca_file));
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError {
                    key: ca_key,
                    message: format!("{ca_file}: cannot verify clients with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    }
    .with_cert_resolver(resolver);
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    if let Some(t) = ticketer(table) {
        server.ticketer = t;
    }
    // One TLS 1.3 ticket per handshake (rustls sends two by default), as
    // Go's TLS (Caddy, Traefik) does, and as OpenSSL does on a resumed
    // handshake: each connection leaves its client a ticket for the next.
    // A second costs both sides a ticket's making and taking in for
    // every connection (load bench, connection per request, resumed:
    // about 5% more connections a second from the same client).
    server.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
    Ok(TlsSettings {
        server: Arc::new(server),
        files,
        client_auth,
    })
}

/// A finished server-side TLS stream over a connection (`IO`: the
/// server's TCP socket).
pub type TlsStream<IO> = tokio_rustls::server::TlsStream<IO>;

/// Runs the server side of a handshake on an accepted connection, which
/// must finish by `by` (the connection's first-head deadline: a client
/// that sends nothing, or plain HTTP, is not waited on for longer, and
/// anything not a TLS handshake fails it at once). Returns the stream and
/// whether the client chose HTTP/2 by ALPN.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    tcp: IO,
    by: tokio::time::Instant,
) -> std::io::Result<(TlsStream<IO>, bool)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
    let stream = tokio::time::timeout_at(by, handshake).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake in time")
    })??;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN[0]);
    Ok((stream, h2))
}

/// A `[[tls.sni]]` name, lower-cased: a DNS name, or `*.` and one.
fn sni_name(key: &str, name: &str) -> Result<String, TlsError> {
    let lower = name.trim().to_ascii_lowercase();
    let dns = lower.strip_prefix("*.").unwrap_or(&lower);
    match ServerName::try_from(dns) {
        Ok(ServerName::DnsName(_)) if !dns.contains('*') => Ok(lower),
        _ => Err(TlsError {
            key: key.to_string(),
            message: format!("{name:?} is not a DNS name (nor *. and one)"),
        }),
    }
}

/// Reads a chain and its key, and checks them: a certificate in the chain
/// file, a key in the key file that ring can sign with and that matches
/// the leaf, every certificate of the chain in date (not expired, and
/// valid from now, give or take [`CLOCK_SKEW`]), and a key not encrypted.
fn certified_key(
    cert_key: &str,
    cert_file: &str,
    key_key: &str,
    key_file: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert_key, cert_file)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (i, c) in chain.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("certificate {} of the chain", i + 1)
        };
        let Some((not_before, not_after)) = validity(c) else {
            return Err(TlsError {
                key: cert_key.to_string(),
                message: format!("{cert_file}: {which} is not an X.509 certificate"),
            });
        };
        let refused = if not_after < now {
            Some(format!("expired at {}", rfc3339(not_after)))
        } else if not_before > now.saturating_add(CLOCK_SKEW) {
            Some(format!("is not valid before {}", rfc3339(not_before)))
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(TlsError {
                key: cert_key.to_string(),
                message: format!("{cert_file}: {which} {why}"),
            });
        }
    }
    let pem = read(key_key, key_file)?;
    if is_encrypted_key(&pem) {
        return Err(TlsError {
            key: key_key.to_string(),
            message: format!(
                "{key_file}: the private key is encrypted; tokengate reads only unencrypted keys \
                 (decrypt it with `openssl pkey -in {key_file} -out NEW_FILE`)"
            ),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError {
        key: key_key.to_string(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                format!("{key_file}: no PEM private key in it (PKCS#8, SEC1 or RSA)")
            }
            e => format!("{key_file}: not PEM: {e}"),
        },
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError {
            key: key_key.to_string(),
            message: format!("{key_file}: not a usable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError {
                key: key_key.to_string(),
                message: format!("{key_file}: does not match the certificate in {cert_file}"),
            })
        }
        Err(e) => Err(TlsError {
            key: cert_key.to_string(),
            message: format!("{cert_file}: {e}"),
        }),
    }
}

/// A file's bytes; an error names the key and the file.
fn read(key: &str, file: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(file)).map_err(|e| TlsError {
        key: key.to_string(),
        message: format!("{file}: cannot read: {e}"),
    })
}

/// Every PEM certificate in a file, at least one.
fn read_certificates(key: &str, file: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError {
            key: key.to_string(),
            message: format!("{file}: not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            key: key.to_string(),
            message: format!("{file}: no PEM certificate in it"),
        });
    }
    Ok(certs)
}

/// Picks the certificate for a handshake: the `[[tls.sni]]` entry for the
/// name the client asked for (exact, then `*.` one label up), else the
/// table's own.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    /// Lower-cased name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        if self.exact.is_empty() && self.wildcard.is_empty() {
            return None;
        }
        let name = name.to_ascii_lowercase();
        self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|n| self.find(n))
            .unwrap_or(&self.default);
        Some(Arc::clone(chosen))
    }
}

/// Unix seconds as `2026-01-31T12:00:00Z`.
fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Whether `certified`'s leaf is valid for `name` (a [`sni_name`]), as a
/// client checking it would judge: for `*.` and a name, valid for every
/// name one label below it, so only a wildcard certificate covers it.
fn covers(certified: &CertifiedKey, name: &str) -> bool {
    let probe = match name.strip_prefix("*.") {
        Some(stem) => format!("tokengate-sni-check.{stem}"),
        None => name.to_string(),
    };
    let (Some(leaf), Ok(probe)) = (certified.cert.first(), ServerName::try_from(probe)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&probe).is_ok())
}

/// How far ahead of this machine's clock a certificate's `notBefore` may
/// be and the certificate still be taken: a certificate issued a moment
/// ago by a CA whose clock runs ahead is not refused, one meant for
/// another day is.
const CLOCK_SKEW: i64 = 300;

/// A certificate's `notBefore` and `notAfter`, in Unix seconds; `None` if
/// it is not the DER of an X.509 certificate (read by `x509-parser`).
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether a key file holds an encrypted private key: PKCS#8's
/// `ENCRYPTED PRIVATE KEY`, or a traditional PEM key with OpenSSL's
/// `Proc-Type: 4,ENCRYPTED` header. The PEM reader skips the first as a
/// section it does not know and cannot read the second, so without this
/// either would be reported as no key at all.
fn is_encrypted_key(pem: &[u8]) -> bool {
    let has = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cert(not_after: (i32, u8, u8)) -> rcgen::CertifiedKey {
        let (y, m, d) = not_after;
        valid(
            rcgen::date_time_ymd(2000, 1, 1),
            rcgen::date_time_ymd(y, m, d),
        )
    }

    /// A self-signed certificate for localhost, valid `from` `until`.
    fn valid(from: time::OffsetDateTime, until: time::OffsetDateTime) -> rcgen::CertifiedKey {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = from;
        params.not_after = until;
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        rcgen::CertifiedKey { cert, key_pair }
    }

    /// A build of `table` from a fresh self-signed pair written into `dir`.
    fn built(table: &str, dir: &std::path::Path) -> TlsSettings {
        let c = cert((2090, 1, 1));
        let (cert_file, key_file) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert_file, c.cert.pem()).unwrap();
        std::fs::write(&key_file, c.key_pair.serialize_pem()).unwrap();
        let f = FileTls {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
            sni: Vec::new(),
            client_ca_file: None,
        };
        build(table, &f).unwrap()
    }

    #[test]
    fn admin_tickets_open_only_the_build_that_made_them() {
        let dir = tempfile::tempdir().unwrap();
        let opens = |maker: &TlsSettings, taker: &TlsSettings| {
            let ticket = maker.server.ticketer.encrypt(b"session").unwrap();
            taker.server.ticketer.decrypt(&ticket).is_some()
        };
        let (public, public_again) = (built("tls", dir.path()), built("tls", dir.path()));
        let (admin, admin_again) = (
            built("admin_tls", dir.path()),
            built("admin_tls", dir.path()),
        );
        // The public listener's sessions outlive a reload ...
        assert!(opens(&public, &public_again));
        // ... but never open the admin listener, and an admin session does
        // not outlive a reload (which may have set `client_ca_file`).
        assert!(!opens(&public, &admin));
        assert!(!opens(&admin, &admin_again));
        assert!(opens(&admin, &admin));
    }

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from it.
        let c = cert((2030, 6, 15));
        assert_eq!(validity(c.cert.der()), Some((946_684_800, 1_907_712_000)));
        let c = cert((2060, 1, 1));
        assert_eq!(validity(c.cert.der()).map(|v| v.1), Some(2_840_140_800));
        assert_eq!(validity(b"not der"), None);
        assert_eq!(validity(&[]), None);
    }

    /// `dir`'s c.pem and k.pem: `c`, and `key` as the key file's text.
    fn files(dir: &Path, c: &rcgen::CertifiedKey, key: &str) -> (String, String) {
        let (cert_file, key_file) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert_file, c.cert.pem()).unwrap();
        std::fs::write(&key_file, key).unwrap();
        (
            cert_file.display().to_string(),
            key_file.display().to_string(),
        )
    }

    #[test]
    fn a_certificate_not_yet_valid_is_refused_with_its_date() {
        let dir = tempfile::tempdir().unwrap();
        let until = rcgen::date_time_ymd(2091, 1, 1);
        let c = valid(rcgen::date_time_ymd(2090, 1, 1), until);
        let (cert_file, key_file) = files(dir.path(), &c, &c.key_pair.serialize_pem());
        let e = certified_key("tls.cert_file", &cert_file, "tls.key_file", &key_file)
            .err()
            .unwrap();
        assert_eq!(e.key, "tls.cert_file");
        assert!(
            e.message
                .ends_with("the certificate is not valid before 2090-01-01T00:00:00Z"),
            "{}",
            e.message
        );
        // One valid since a moment ago, or a moment from now (a clock
        // behind its CA's), is taken.
        let now = time::OffsetDateTime::now_utc();
        for ahead in [-60, 60] {
            let c = valid(now + time::Duration::seconds(ahead), until);
            let (cert_file, key_file) = files(dir.path(), &c, &c.key_pair.serialize_pem());
            assert!(
                certified_key("k", &cert_file, "k", &key_file).is_ok(),
                "{ahead}"
            );
        }
    }

    #[test]
    fn an_encrypted_key_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let c = cert((2090, 1, 1));
        // Only the markers matter: the key is refused before it is read.
        for key in [
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        ] {
            let (cert_file, key_file) = files(dir.path(), &c, key);
            let e = certified_key("tls.cert_file", &cert_file, "tls.key_file", &key_file)
                .err()
                .unwrap();
            assert_eq!(e.key, "tls.key_file");
            assert!(e.message.contains("the private key is encrypted"), "{}", e.message);
        }
        let (cert_file, key_file) = files(dir.path(), &c, "nothing here\n");
        let e = certified_key("k", &cert_file, "k", &key_file)
            .err()
            .unwrap();
        assert!(e.message.contains("no PEM private key"), "{}", e.message);
    }

    #[test]
    fn sni_names() {
        assert_eq!(sni_name("k", "API.example.com").unwrap(), "api.example.com");
        assert_eq!(sni_name("k", "*.example.com").unwrap(), "*.example.com");
        assert!(sni_name("k", "a.*.example.com").is_err());
        assert!(sni_name("k", "127.0.0.1").is_err());
        assert!(sni_name("k", "").is_err());
    }

    #[test]
    fn an_sni_certificate_must_be_for_its_name() {
        let certified = |names: &[&str]| {
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let key_pair = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key_pair).unwrap();
            let der = PrivateKeyDer::from_pem_slice(key_pair.serialize_pem().as_bytes()).unwrap();
            CertifiedKey::new(
                vec![cert.der().clone()],
                provider().key_provider.load_private_key(der).unwrap(),
            )
        };
        let api = certified(&["api.example.com", "www.example.com"]);
        assert!(covers(&api, "api.example.com"));
        assert!(covers(&api, "www.example.com"));
        assert!(!covers(&api, "example.com"));
        assert!(!covers(&api, "*.example.com"), "one name is not every name");
        let wild = certified(&["*.example.com"]);
        assert!(covers(&wild, "*.example.com"));
        assert!(covers(&wild, "api.example.com"));
        assert!(!covers(&wild, "a.b.example.com"));
        assert!(!covers(&wild, "*.other.example"));
        assert!(!covers(&certified(&["localhost"]), "api.example.com"));
    }

    #[test]
    fn resolver_prefers_exact_then_wildcard_then_default() {
        let key = |c: &rcgen::CertifiedKey| {
            let der = PrivateKeyDer::from_pem_slice(c.key_pair.serialize_pem().as_bytes()).unwrap();
            Arc::new(CertifiedKey::new(
                vec![c.cert.der().clone()],
                provider().key_provider.load_private_key(der).unwrap(),
            ))
        };
        let (d, e, w) = (cert((2099, 1, 1)), cert((2099, 1, 1)), cert((2099, 1, 1)));
        let r = SniResolver {
            default: key(&d),
            exact: HashMap::from([("api.example.com".to_string(), key(&e))]),
            wildcard: HashMap::from([("example.com".to_string(), key(&w))]),
        };
        let leaf = |c: Option<&Arc<CertifiedKey>>| c.map(|c| c.cert[0].clone());
        assert_eq!(leaf(r.find("API.example.com")), Some(e.cert.der().clone()));
        assert_eq!(leaf(r.find("www.example.com")), Some(w.cert.der().clone()));
        assert_eq!(leaf(r.find("a.b.example.com")), None);
        assert_eq!(leaf(r.find("example.com")), None);
    }
}
