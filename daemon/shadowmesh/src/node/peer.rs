//! A verified peer and its control stream: handshake errors, the session, frames on the
//! QUIC lane, and control-message framing.

use super::*;

/// Why a connection handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// QUIC or TLS failed (includes a pinned-key mismatch and no common key-exchange group).
    Connect(crate::quic::ConnectError),
    /// The connection failed or was closed by the peer.
    Connection(crate::quic::ConnectionError),
    /// The peer closed the connection with one of our application codes.
    Rejected {
        /// The code (`CLOSE_*` in `shadowmesh_proto::consts`).
        code: u32,
    },
    /// The peer's HELLO or INIT/RESP failed verification (we closed the connection).
    Verify(shadowmesh_crypto::Error),
    /// The control stream broke the framing rules.
    Protocol(&'static str),
    /// The handshake did not finish in time.
    Timeout,
    /// The peer found our record expired or not yet valid by its clock, which it told us.
    ClockRejected {
        /// The peer's clock, Unix seconds.
        peer_now: u64,
    },
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Connect(e) => write!(f, "connect: {e}"),
            HandshakeError::Connection(e) => write!(f, "connection: {e}"),
            HandshakeError::Rejected { code } => {
                write!(f, "closed by peer: {}", close_reason(*code))
            }
            HandshakeError::Verify(e) => write!(f, "peer failed verification: {e}"),
            HandshakeError::Protocol(what) => write!(f, "protocol error: {what}"),
            HandshakeError::Timeout => f.write_str("handshake timed out"),
            HandshakeError::ClockRejected { peer_now } => write!(
                f,
                "closed by peer: our record is expired or not yet valid by its clock ({peer_now})"
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Human-readable name of one of our QUIC application close codes.
pub fn close_reason(code: u32) -> &'static str {
    match code {
        CLOSE_AUTH_FAILED => "authentication failed",
        CLOSE_WRONG_NETWORK => "wrong network key",
        CLOSE_REPLACED => "replaced by a newer connection",
        CLOSE_PROTOCOL => "protocol violation",
        CLOSE_SHUTDOWN => "shutdown",
        CLOSE_CLOCK => "record expired or not yet valid by the peer's clock",
        CLOSE_BUSY => "busy",
        CLOSE_IDLE => "idle",
        _ => "unknown reason",
    }
}

impl From<crate::quic::ConnectionError> for HandshakeError {
    fn from(e: crate::quic::ConnectionError) -> Self {
        match &e {
            crate::quic::ConnectionError::ApplicationClosed(c) => {
                match u32::try_from(c.error_code.into_inner()) {
                    Ok(CLOSE_CLOCK) if c.reason.len() == 8 => HandshakeError::ClockRejected {
                        peer_now: u64::from_be_bytes(c.reason[..].try_into().expect("8 bytes")),
                    },
                    Ok(code) => HandshakeError::Rejected { code },
                    Err(_) => HandshakeError::Connection(e),
                }
            }
            _ => HandshakeError::Connection(e),
        }
    }
}

impl From<crate::quic::ReadExactError> for HandshakeError {
    fn from(e: crate::quic::ReadExactError) -> Self {
        match e {
            crate::quic::ReadExactError::FinishedEarly(_) => {
                HandshakeError::Protocol("control stream ended early")
            }
            crate::quic::ReadExactError::ReadError(crate::quic::ReadError::ConnectionLost(c)) => {
                c.into()
            }
            crate::quic::ReadExactError::ReadError(_) => {
                HandshakeError::Protocol("control stream reset")
            }
        }
    }
}

impl From<crate::quic::WriteError> for HandshakeError {
    fn from(e: crate::quic::WriteError) -> Self {
        match e {
            crate::quic::WriteError::ConnectionLost(c) => c.into(),
            _ => HandshakeError::Protocol("control stream write failed"),
        }
    }
}

/// What one handshake cost, from this side's view.
#[derive(Debug, Clone, Copy, Default)]
pub struct HandshakeStats {
    /// Wall time from dial (or accept) to an established session.
    pub elapsed: Duration,
    /// UDP payload bytes this side sent.
    pub udp_tx_bytes: u64,
    /// UDP payload bytes this side received.
    pub udp_rx_bytes: u64,
    /// UDP datagrams sent.
    pub udp_tx_datagrams: u64,
    /// quinn's smoothed RTT estimate at the end.
    pub rtt: Duration,
    /// Whether TLS resumed an earlier session (no certificate check happened).
    pub resumed: bool,
    /// Time until the QUIC/TLS handshake alone completed (before HELLO).
    pub tls_elapsed: Duration,
    /// UDP payload bytes this side had sent when TLS completed.
    pub tls_tx_bytes: u64,
    /// UDP payload bytes this side had received when TLS completed.
    pub tls_rx_bytes: u64,
}

/// An authenticated peer connection with its end-to-end session.
pub struct Peer {
    /// The peer's PeerId, proven by HELLO.
    pub peer_id: PeerId,
    /// The peer's verified record.
    pub record: VerifiedRecord,
    /// The QUIC connection.
    pub conn: Connection,
    /// The end-to-end session (frame keys, replay windows, rekey state); only between members
    /// of the same mesh. `None` for a DHT-only peer: no packet ever flows over it.
    pub session: Option<Session>,
    /// Our role on this connection.
    pub role: Role,
    /// The sending half of the control stream.
    pub control: SendStream,
    /// The receiving half of the control stream, until [`Peer::control_recv`] takes it.
    pub control_rx: Option<RecvStream>,
    /// Handshake cost.
    pub stats: HandshakeStats,
    /// Sequence number of the record we presented in our HELLO. With `record.seq` it orders
    /// two connections between the same pair the same way on both ends (see
    /// [`Peer::precedence`]).
    pub local_seq: u64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("peer_id", &self.peer_id)
            .field("remote", &self.conn.remote_address())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Why a frame could not be sent or received on a [`Peer`].
#[derive(Debug)]
pub enum FrameError {
    /// Sealing or opening failed (replay, tamper, no key).
    Crypto(shadowmesh_crypto::Error),
    /// quinn refused the datagram (too large, peer does not accept datagrams).
    Send(crate::quic::SendDatagramError),
    /// The connection is gone.
    Connection(crate::quic::ConnectionError),
    /// The peer is not a member of our mesh (DHT-only): no packets flow to or from it.
    NotMember,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Crypto(e) => write!(f, "{e}"),
            FrameError::Send(e) => write!(f, "send: {e}"),
            FrameError::Connection(e) => write!(f, "connection: {e}"),
            FrameError::NotMember => f.write_str("peer is DHT-only: no packets flow"),
        }
    }
}

impl std::error::Error for FrameError {}

impl Peer {
    /// Which of two connections between the same two nodes survives: the one with the higher
    /// precedence. Both ends compute the same value for the same connection: the sum of the
    /// two records' sequence numbers (a restarted node signs a newer record, so its new
    /// connection wins over the dead one), then whether the lower PeerId dialled (settles
    /// simultaneous dials).
    pub fn precedence(&self, me: &PeerId) -> (u64, bool) {
        let lower_dialled = match self.role {
            Role::Dialler => me < &self.peer_id,
            Role::Listener => &self.peer_id < me,
        };
        (
            self.local_seq.saturating_add(self.record.seq),
            lower_dialled,
        )
    }

    /// What settles two connections of equal precedence that race each other
    /// ([`shadowmesh_link::members::Link::tiebreak`]): 8 bytes of the TLS exporter, the same at
    /// both ends of this connection and unrelated between connections.
    pub fn tiebreak(&self) -> u64 {
        let mut b = [0u8; 8];
        match self
            .conn
            .export_keying_material(&mut b, b"shadowmesh tiebreak", b"")
        {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }

    /// Takes the receiving half of the control stream (for a reader task); the sending half
    /// stays in `control.0`.
    ///
    /// # Panics
    /// If called twice.
    pub fn control_recv(&mut self) -> RecvStream {
        self.control_rx.take().expect("control_recv called once")
    }

    /// Seals `payload` into one SMSH frame and sends it as a QUIC DATAGRAM.
    ///
    /// This convenience path allocates the datagram buffer; the TUN data plane will use pooled
    /// buffers instead.
    pub fn send_frame(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), FrameError> {
        let session = self.session.as_mut().ok_or(FrameError::NotMember)?;
        let mut buf = bytes::BytesMut::zeroed(payload.len() + FRAME_OVERHEAD);
        buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload.len()].copy_from_slice(payload);
        session
            .seal(crate::mono_now(), kind, &mut buf)
            .map_err(FrameError::Crypto)?;
        self.conn
            .send_datagram(buf.freeze())
            .map_err(FrameError::Send)
    }

    /// Opens a received datagram; returns the frame type and the plaintext's range in `buf`.
    pub fn open_frame(
        &mut self,
        buf: &mut [u8],
    ) -> Result<(FrameType, std::ops::Range<usize>), FrameError> {
        let (kind, plain) = self
            .session
            .as_mut()
            .ok_or(FrameError::NotMember)?
            .open(crate::mono_now(), buf)
            .map_err(FrameError::Crypto)?;
        let len = plain.len();
        Ok((kind, FRAME_HEADER_LEN..FRAME_HEADER_LEN + len))
    }
}

impl HandshakeStats {
    pub(super) fn new(
        start: Instant,
        tls: (Duration, crate::quic::ConnectionStats),
        conn: &Connection,
        resumed: bool,
    ) -> Self {
        let s = conn.stats();
        HandshakeStats {
            elapsed: start.elapsed(),
            udp_tx_bytes: s.udp_tx.bytes,
            udp_rx_bytes: s.udp_rx.bytes,
            udp_tx_datagrams: s.udp_tx.datagrams,
            rtt: s.path.rtt,
            resumed,
            tls_elapsed: tls.0,
            tls_tx_bytes: tls.1.udp_tx.bytes,
            tls_rx_bytes: tls.1.udp_rx.bytes,
        }
    }
}

/// The TLS server name we dial a PeerId by: its hex split into two DNS labels (a label may
/// hold at most 63 characters). Also keys the TLS session cache, so a ticket is only ever
/// offered back to the PeerId that issued it.
pub fn server_name(peer: &PeerId) -> String {
    let hex = peer.to_string();
    format!("{}.{}", &hex[..32], &hex[32..])
}

/// Closes `conn` with the code matching `e` and returns the error.
pub(super) fn fail(conn: &Connection, e: shadowmesh_crypto::Error) -> HandshakeError {
    use shadowmesh_crypto::Error as C;
    use shadowmesh_proto::Error as W;
    // A record that is wrong only by our clock: tell the peer what our clock says (it may be
    // a router whose own clock is unset), unless ours is unset too.
    if matches!(e, C::Wire(W::Expired | W::NotYetValid | W::BadLifetime)) && !crate::clock_unset() {
        conn.close(
            VarInt::from_u32(CLOSE_CLOCK),
            &crate::unix_now().to_be_bytes(),
        );
        return HandshakeError::Verify(e);
    }
    let code = match e {
        C::WrongNetworkKey => CLOSE_WRONG_NETWORK,
        C::Wire(W::Expired | W::BadLifetime | W::Replayed(_) | W::CounterExhausted) => {
            CLOSE_AUTH_FAILED
        }
        C::Wire(_) => CLOSE_PROTOCOL,
        _ => CLOSE_AUTH_FAILED,
    };
    conn.close(VarInt::from_u32(code), close_reason(code).as_bytes());
    HandshakeError::Verify(e)
}

/// The exporter value both HELLOs and INIT/RESP bind to, and the Ed25519 key TLS authenticated.
pub(super) fn session_binding(
    conn: &Connection,
) -> Result<([u8; EXPORTER_LEN], [u8; 32]), HandshakeError> {
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| HandshakeError::Protocol("TLS exporter unavailable"))?;
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(HandshakeError::Protocol("peer presented no key"))?;
    let key = certs
        .first()
        .and_then(|c| ed25519_from_spki(c.as_ref()))
        .ok_or(HandshakeError::Protocol("peer key is not Ed25519"))?;
    Ok((exporter, key))
}

/// Reads one control message into `buf`, requiring type `want`.
pub async fn expect_msg(
    recv: &mut RecvStream,
    buf: &mut Vec<u8>,
    want: MsgType,
) -> Result<(), HandshakeError> {
    let t = read_msg(recv, buf).await?;
    if t != want {
        return Err(HandshakeError::Protocol("unexpected control message"));
    }
    Ok(())
}

/// Reads one length-prefixed control message into `buf` (bounded by `CONTROL_MAX_BODY`); one of
/// a type this version does not know is skipped.
pub async fn read_msg(recv: &mut RecvStream, buf: &mut Vec<u8>) -> Result<MsgType, HandshakeError> {
    loop {
        let mut h = [0u8; msg::MSG_HEADER_LEN];
        recv.read_exact(&mut h).await?;
        let (t, len) = msg::parse_header_any(&h)
            .map_err(|_| HandshakeError::Protocol("bad control message header"))?;
        buf.clear();
        buf.resize(len, 0);
        recv.read_exact(buf).await?;
        match t {
            Ok(t) => return Ok(t),
            // A newer member's message: skipped (its body is bounded like any other).
            Err(t) => log::debug!("skipped a control message of unknown type {t}"),
        }
    }
}

/// Writes one control message.
pub async fn write_msg(
    send: &mut SendStream,
    t: MsgType,
    body: &[u8],
) -> Result<(), HandshakeError> {
    let mut out = Vec::with_capacity(body.len() + msg::MSG_HEADER_LEN);
    msg::emit_header(t, body.len(), &mut out);
    out.extend_from_slice(body);
    send.write_all(&out).await?;
    Ok(())
}
