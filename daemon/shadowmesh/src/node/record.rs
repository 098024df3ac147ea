//! Our signed record and its sequence numbers, which stay above every one issued before, also
//! across restarts with the clock set back.

use super::*;

/// Signs this node's record with sequence number `seq`, issued at `now` (Unix seconds). A
/// seed's record has no mesh: its (public) payload is sealed under the all-zero key.
pub(super) fn sign_record(
    id: &Identity,
    cfg: &NodeConfig,
    payload: &Payload,
    seq: u64,
    now: u64,
) -> Result<Vec<u8>, shadowmesh_crypto::Error> {
    build_record(
        id,
        cfg.network_key.as_deref().unwrap_or(&[0; 32]),
        &RecordParams {
            seq,
            issued_at: now,
            expires_at: now + cfg.record_lifetime.as_secs().min(RECORD_MAX_LIFETIME_SECS),
            payload,
        },
    )
}

/// Sequence numbers are reserved this far ahead on flash: the `seq` file is written at start
/// and then at most once a day (records are re-signed hourly), not at every record.
pub const SEQ_RESERVE: u64 = 86_400;

/// Our record sequence numbers: above every one issued before, also across restarts with the
/// clock set back (a router without a real-time clock boots at its image's build date), and
/// following the clock when it is ahead. Numbers below the floor in the `seq` file were never
/// handed out past it: the file always holds a number above every one issued.
#[derive(Debug)]
pub(super) struct SeqFloor {
    pub(super) path: Option<std::path::PathBuf>,
    /// What the file held at start: no number of this run is below it.
    pub(super) floor: u64,
    /// What the file holds now: every number issued is below it.
    pub(super) reserved: std::cell::Cell<u64>,
}

impl SeqFloor {
    pub(super) fn load(path: Option<std::path::PathBuf>) -> SeqFloor {
        let reserved = path
            .as_ref()
            .and_then(|p| match std::fs::read_to_string(p) {
                Ok(t) => t
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| {
                        log::warn!(
                            "{}: not a sequence number ({e}); starting from the clock",
                            p.display()
                        );
                    })
                    .ok(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    log::warn!("reading {}: {e}; starting from the clock", p.display());
                    None
                }
            })
            .unwrap_or(0);
        SeqFloor {
            path,
            floor: reserved,
            reserved: std::cell::Cell::new(reserved),
        }
    }

    /// The sequence number of a record signed at `now` after one numbered `prev`.
    pub(super) fn next(&self, prev: u64, now: u64) -> u64 {
        let seq = now.max(prev + 1).max(self.floor);
        if seq >= self.reserved.get() {
            let ahead = seq + SEQ_RESERVE;
            if let Some(p) = &self.path {
                if let Err(e) = crate::keyfile::write_atomic(p, ahead.to_string().as_bytes(), 0o600)
                {
                    log::warn!(
                        "writing {}: {e} (sequence numbers kept in memory)",
                        p.display()
                    );
                }
            }
            self.reserved.set(ahead);
        }
        seq
    }
}

pub(super) fn record_seq(record: &[u8]) -> u64 {
    shadowmesh_proto::record::RecordRef::parse(record)
        .map(|r| r.seq)
        .unwrap_or(0)
}

#[cfg(test)]
mod seq_tests {
    use super::*;

    #[test]
    pub(super) fn sequence_numbers_survive_a_restart_with_the_clock_set_back() {
        let dir = std::env::temp_dir().join(format!("sm-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("seq");
        let a = SeqFloor::load(Some(file.clone()));
        let t = 1_800_000_000;
        let s1 = a.next(0, t);
        let s2 = a.next(s1, t + 3600);
        assert_eq!((s1, s2), (t, t + 3600), "the clock, when it is ahead");
        // Hourly records within the reserve write nothing new.
        let on_disk = std::fs::read_to_string(&file).unwrap();
        let s3 = a.next(s2, t + 7200);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), on_disk);
        // A restart five years back: still above everything issued.
        let b = SeqFloor::load(Some(file.clone()));
        let back = t - 5 * 365 * 86_400;
        let s4 = b.next(0, back);
        assert!(s4 > s3, "{s4} > {s3}");
        assert!(b.next(s4, back + 60) > s4);
        // Garbage in the file: start from the clock, and say so.
        std::fs::write(&file, "not a number").unwrap();
        assert_eq!(SeqFloor::load(Some(file)).next(0, t), t);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Records of peers verified in recent handshakes. A dial to one of them says which of its
/// records we hold (`HELLO_HOLDS_RECORD`), and a peer whose record is unchanged answers with
/// its sequence number alone: 7.4 KB less on the wire and one dual verification less. Only the
/// most recent few: each is ~10 KB (the keys and the record).
#[derive(Debug, Default)]
pub(super) struct HeldRecords(Vec<VerifiedRecord>);

impl HeldRecords {
    /// How many are kept.
    pub(super) const MAX: usize = 8;

    /// `peer`'s record, if we hold one that has not expired at `now_unix`.
    pub(super) fn get(&self, peer: &PeerId, now_unix: u64) -> Option<&VerifiedRecord> {
        self.0
            .iter()
            .find(|r| r.peer_id() == *peer && r.expires_at > now_unix)
    }

    /// Keeps `record` (in place of the peer's earlier one), dropping the least recently kept
    /// when full.
    pub(super) fn keep(&mut self, record: &VerifiedRecord) {
        let id = record.peer_id();
        self.0.retain(|r| r.peer_id() != id);
        if self.0.len() == Self::MAX {
            self.0.remove(0);
        }
        self.0.push(record.clone());
    }
}
