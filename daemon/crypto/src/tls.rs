//! The rustls side of the hop layer (DESIGN.md, "Handshake", step 3).
//!
//! - Key exchange: only [`HybridGroup`] (ML-KEM-1024 + X25519 at a private-use code point). A
//!   client that offers only classical groups finds no common group and cannot connect: there is
//!   nothing to downgrade to.
//! - Cipher suite: only `TLS_CHACHA20_POLY1305_SHA256` (quinn brings AES-128-GCM for Initial
//!   packets itself, as QUIC requires).
//! - Authentication: Ed25519 raw public keys (RFC 7250) on both sides. The dialler pins the key
//!   from the peer's record when it has one; the listener cannot know who dials, so it accepts
//!   any Ed25519 key and HELLO binds that key to a PeerId.
//! - ML-DSA-87 stays out of TLS on purpose: its 2,592-byte key and 4,627-byte signature in the
//!   server's first flight would exceed QUIC's 3x anti-amplification limit and cost a round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup,
};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, NamedGroup, SignatureScheme};
use shadowmesh_proto::consts::HYBRID_GROUP_CODE_POINT;

use crate::kx;
use crate::Identity;

/// ALPN protocol identifier of ShadowMesh's QUIC connections.
pub const ALPN: &[u8] = b"smsh/1";

/// The hybrid ML-KEM-1024 + X25519 TLS key-exchange group.
#[derive(Debug)]
pub struct HybridGroup;

/// The one instance rustls refers to.
pub static HYBRID_GROUP: &dyn SupportedKxGroup = &HybridGroup;

const GROUP: NamedGroup = NamedGroup::Unknown(HYBRID_GROUP_CODE_POINT);

struct ActiveHybrid(kx::Initiator);

impl ActiveKeyExchange for ActiveHybrid {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        self.0
            .finish(peer_pub_key)
            .map(|s| SharedSecret::from(&s[..]))
            .map_err(|_| rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare))
    }

    fn pub_key(&self) -> &[u8] {
        self.0.share()
    }

    fn group(&self) -> NamedGroup {
        GROUP
    }
}

impl SupportedKxGroup for HybridGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(ActiveHybrid(kx::Initiator::generate())))
    }

    /// Server side: a KEM answers with data that depends on the client's share, so this is
    /// implemented directly rather than as `start` + `complete`.
    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<CompletedKeyExchange, rustls::Error> {
        let (share, secret) = kx::respond(peer_pub_key)
            .map_err(|_| rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
        Ok(CompletedKeyExchange {
            group: GROUP,
            pub_key: share.to_vec(),
            secret: SharedSecret::from(&secret[..]),
        })
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        GROUP
    }
}

/// Which key exchange a provider offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KxPolicy {
    /// ML-KEM-1024 + X25519 only. What the daemon uses.
    Hybrid,
    /// X25519 only. Exists for the benchmark baseline and the downgrade test; the daemon never
    /// uses it.
    ClassicalOnly,
}

/// The `CryptoProvider` for quinn: ring's primitives, our group, one cipher suite, Ed25519
/// alone. Built whole rather than from ring's default provider, whose signature table and key
/// loader reach ECDSA and RSA: with them linked, ring's P-256 precomputed table (148 KiB) and
/// the RSA code went into every router binary, never used.
pub fn provider(kx: KxPolicy) -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![chacha_suite()],
        kx_groups: match kx {
            KxPolicy::Hybrid => vec![HYBRID_GROUP],
            KxPolicy::ClassicalOnly => vec![rustls::crypto::ring::kx_group::X25519],
        },
        signature_verification_algorithms: ED25519_ONLY,
        secure_random: &Ed25519Keys,
        key_provider: &Ed25519Keys,
    }
}

/// TLS_CHACHA20_POLY1305_SHA256 as ring's provider has it, with QUIC and TLS record keys kept as
/// their key bytes ([`crate::quic_keys`]: 3.7 KiB less per connection).
fn chacha_suite() -> rustls::SupportedCipherSuite {
    static SUITE: std::sync::OnceLock<rustls::Tls13CipherSuite> = std::sync::OnceLock::new();
    let suite = SUITE.get_or_init(|| {
        let ring = rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256
            .tls13()
            .expect("a TLS 1.3 suite");
        rustls::Tls13CipherSuite {
            common: rustls::CipherSuiteCommon {
                suite: ring.common.suite,
                hash_provider: ring.common.hash_provider,
                confidentiality_limit: ring.common.confidentiality_limit,
            },
            hkdf_provider: ring.hkdf_provider,
            aead_alg: &crate::quic_keys::ChaChaRecords,
            quic: Some(&crate::quic_keys::ChaChaQuic),
        }
    });
    rustls::SupportedCipherSuite::Tls13(suite)
}

/// The one signature scheme either end offers or accepts.
static ED25519_ONLY: rustls::crypto::WebPkiSupportedAlgorithms =
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[webpki::ring::ED25519],
        mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])],
    };

/// Randomness from ring, and Ed25519 keys only.
#[derive(Debug)]
struct Ed25519Keys;

impl rustls::crypto::SecureRandom for Ed25519Keys {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

impl rustls::crypto::KeyProvider for Ed25519Keys {
    fn load_private_key(
        &self,
        key_der: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        match key_der {
            rustls::pki_types::PrivateKeyDer::Pkcs8(der) => {
                rustls::crypto::ring::sign::any_eddsa_type(&der)
            }
            _ => Err(rustls::Error::General("only Ed25519 PKCS#8 keys".into())),
        }
    }
}

/// DER SubjectPublicKeyInfo prefix of an Ed25519 key (RFC 8410 §4).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Wraps an Ed25519 public key as a DER SubjectPublicKeyInfo (the RFC 7250 "certificate").
pub fn ed25519_spki(pk: &[u8; 32]) -> Vec<u8> {
    let mut v = ED25519_SPKI_PREFIX.to_vec();
    v.extend_from_slice(pk);
    v
}

/// Extracts the Ed25519 key from a raw-public-key "certificate"; `None` for anything else.
pub fn ed25519_from_spki(der: &[u8]) -> Option<[u8; 32]> {
    if der.len() == 44 && der[..12] == ED25519_SPKI_PREFIX {
        der[12..].try_into().ok()
    } else {
        None
    }
}

fn certified_key(id: &Identity) -> Arc<CertifiedKey> {
    let mut der = PrivatePkcs8KeyDer::from(id.ed25519_pkcs8());
    let key = rustls::crypto::ring::sign::any_eddsa_type(&der).expect("valid Ed25519 PKCS#8");
    zeroize::Zeroize::zeroize(&mut der);
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(ed25519_spki(&id.ed25519_public()))],
        key,
    ))
}

fn verify_sig(
    msg: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        msg,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &ED25519_ONLY,
    )
}

fn check_rpk(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<[u8; 32], rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ));
    }
    ed25519_from_spki(end_entity.as_ref()).ok_or(rustls::Error::InvalidCertificate(
        rustls::CertificateError::BadEncoding,
    ))
}

/// Server verifier of the dialler: accepts exactly the pinned Ed25519 key, or (when dialling a
/// PeerId whose record we do not hold yet) any Ed25519 key, which HELLO then has to bind.
/// Counts its calls: a resumed TLS session skips certificate verification, so the count tells
/// full handshakes from resumptions.
#[derive(Debug)]
pub struct PinnedServerKey {
    expected: Option<[u8; 32]>,
    checks: Arc<AtomicUsize>,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let pk = check_rpk(end_entity, intermediates)?;
        match self.expected {
            Some(expected) if !crate::ct_eq(&expected, &pk) => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(msg, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Client verifier of the listener: any well-formed Ed25519 raw public key (HELLO binds it).
#[derive(Debug)]
pub struct AnyEd25519Client;

impl ClientCertVerifier for AnyEd25519Client {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_rpk(end_entity, intermediates).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(msg, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Most pinned-key verifiers kept for session resumption.
const MAX_CACHED_VERIFIERS: usize = 256;

/// Builds TLS configurations for one identity. Client configurations are made per dial (each
/// pins its own key) but share one session store, so resumption works across dials.
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    key: Arc<CertifiedKey>,
    client_resolver: Arc<dyn rustls::client::ResolvesClientCert>,
    // rustls resumes a session only under the very same verifier and resolver `Arc`s that
    // stored it (`Tls13ClientSessionValue::compatible_config` compares pointers), so each pinned
    // key keeps one verifier. Bounded; cleared when full (costs only resumption).
    verifiers: std::sync::Mutex<std::collections::BTreeMap<Option<[u8; 32]>, Arc<PinnedServerKey>>>,
    sessions: Arc<dyn rustls::client::ClientSessionStore>,
    server_cert_checks: Arc<AtomicUsize>,
}

impl core::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsContext").finish_non_exhaustive()
    }
}

impl TlsContext {
    /// A context for `id` with the given key-exchange policy.
    pub fn new(id: &Identity, kx: KxPolicy) -> Self {
        let key = certified_key(id);
        TlsContext {
            provider: Arc::new(provider(kx)),
            client_resolver: Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(
                key.clone(),
            )),
            verifiers: Default::default(),
            key,
            // Bounded: 64 peers' tickets (a ticket is ~200 bytes).
            sessions: Arc::new(rustls::client::ClientSessionMemoryCache::new(64)),
            server_cert_checks: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many server certificates this context's client configurations verified: a dial that
    /// completes without incrementing it resumed a TLS session.
    pub fn server_cert_checks(&self) -> usize {
        self.server_cert_checks.load(Ordering::Relaxed)
    }

    /// A client configuration pinning `expected` (the Ed25519 key from the peer's record), or
    /// accepting any key when the record is not known yet.
    pub fn client(&self, expected: Option<[u8; 32]>) -> rustls::ClientConfig {
        let verifier = {
            let mut map = self.verifiers.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_CACHED_VERIFIERS && !map.contains_key(&expected) {
                map.clear();
            }
            map.entry(expected)
                .or_insert_with(|| {
                    Arc::new(PinnedServerKey {
                        expected,
                        checks: self.server_cert_checks.clone(),
                    })
                })
                .clone()
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.client_resolver.clone());
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::store(self.sessions.clone());
        cfg
    }

    /// The server configuration.
    pub fn server(&self) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(AnyEd25519Client))
            .with_cert_resolver(Arc::new(
                rustls::server::AlwaysResolvesServerRawPublicKeys::new(self.key.clone()),
            ));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
        cfg.max_early_data_size = 0;
        cfg
    }
}
