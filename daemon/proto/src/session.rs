//! What an end-to-end session is to the code that drives it: when it last sent and received,
//! how old its sending key is, and how it answers the rekey messages of the control stream.
//! `shadowmesh_crypto::session::Session` is the implementation; the link core is generic over
//! this trait, so that its timers and its control-message handling are one code for the daemon
//! and for tests that run them on virtual time.

use core::time::Duration;

/// A session as its driver sees it. Times are the caller's monotonic `now`.
pub trait SessionState {
    /// Why a rekey message was refused.
    type Error: core::fmt::Display;

    /// Whether this side started the session (and so drives its rekeys).
    fn is_initiator(&self) -> bool;
    /// When a frame was last sealed (or the session began).
    fn last_sent(&self) -> Duration;
    /// When an authenticated frame last opened (or the session began).
    fn last_received(&self) -> Duration;
    /// When the sending key was made and how many frames it sealed; `None` once it is gone.
    fn send_key(&self) -> Option<(Duration, u64)>;
    /// When the first data frame went out that nothing authenticated answered since; `None`
    /// when every data frame was followed by one received.
    fn unanswered_since(&self) -> Option<Duration>;
    /// When the rekey in flight started.
    fn rekey_started(&self) -> Option<Duration>;
    /// Starts a rekey (initiator): the REKEY_INIT body.
    fn start_rekey(&mut self, now: Duration) -> Result<Vec<u8>, Self::Error>;
    /// Answers a REKEY_INIT (responder): the REKEY_RESP body.
    fn handle_rekey_init(&mut self, now: Duration, body: &[u8]) -> Result<Vec<u8>, Self::Error>;
    /// Takes the REKEY_RESP to our REKEY_INIT (initiator).
    fn handle_rekey_resp(&mut self, now: Duration, body: &[u8]) -> Result<(), Self::Error>;
}
