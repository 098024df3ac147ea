//! `shadowmesh selftest`: checks a build on the machine it runs on, and across machines.
//!
//! `--write DIR` signs a peer record with the key file and seals an SMSH frame with a fixed
//! session key into DIR; `--verify DIR` checks files written by any build, on any architecture
//! (CI writes on x86_64 and verifies under qemu for aarch64, armv7, mipsel and big-endian mips,
//! and the other way round). Both print one JSON line.

use std::path::{Path, PathBuf};

use shadowmesh_crypto::aead::FrameKey;
use shadowmesh_crypto::record::{build_record, verify_record, RecordParams};
use shadowmesh_proto::consts::{FRAME_HEADER_LEN, FRAME_OVERHEAD};
use shadowmesh_proto::frame::{FrameType, Header};
use shadowmesh_proto::record::{Payload, Route};

use crate::args::{CliError, Opts};
use crate::json::Obj;

const NETWORK_KEY: [u8; 32] = *b"shadowmesh selftest network key!";
const FRAME_KEY: [u8; 32] = *b"shadowmesh selftest frame key 32";
const PLAINTEXT: &[u8] = b"selftest: an inner IP packet crosses architectures intact";
/// Expiry far enough ahead for a check run now; the verifier accepts any time before it.
const VALID_SECS: u64 = 20 * 3600;

fn payload() -> Payload {
    Payload {
        addrs: vec!["192.0.2.1:4433".parse().expect("literal")],
        ipv4: Some("10.100.1.2".parse().expect("literal")),
        ipv4_counter: 0,
        ipv6: Some("fd00::1".parse().expect("literal")),
        routes: vec![Route {
            addr: "192.168.1.0".parse().expect("literal"),
            prefix_len: 24,
        }],
        ..Payload::default()
    }
}

fn io(p: &Path, e: std::io::Error) -> CliError {
    CliError::fail(format!("{}: {e}", p.display()))
}

/// Entry point of `shadowmesh selftest`.
pub fn main(o: &Opts) -> Result<(), CliError> {
    o.only(&["--key", "--write", "--verify", "--log-level"])?;
    match (o.get("--write"), o.get("--verify")) {
        (Some(dir), None) => write(&PathBuf::from(o.need("--key")?), Path::new(dir)),
        (None, Some(dir)) => verify(Path::new(dir)),
        _ => Err(CliError::usage(
            "selftest needs --key KEY --write DIR, or --verify DIR",
        )),
    }
}

fn write(key: &Path, dir: &Path) -> Result<(), CliError> {
    let id = crate::keyfile::load(key)?;
    let now = crate::unix_now();
    let p = payload();
    let record = build_record(
        &id,
        &NETWORK_KEY,
        &RecordParams {
            seq: 1,
            issued_at: now,
            expires_at: now + VALID_SECS,
            payload: &p,
        },
    )
    .map_err(|e| CliError::fail(e.to_string()))?;
    let mut frame = vec![0u8; PLAINTEXT.len() + FRAME_OVERHEAD];
    frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + PLAINTEXT.len()].copy_from_slice(PLAINTEXT);
    let h = Header {
        kind: FrameType::Data,
        receiver: 0x5EAF_7E57,
        seq: 0x0102_0304_0506_0708,
        len: PLAINTEXT.len() as u16,
        key_phase: true,
    };
    FrameKey::new(&FRAME_KEY)
        .seal(&h, &mut frame)
        .map_err(|e| CliError::fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (rp, fp) = (dir.join("record.bin"), dir.join("frame.bin"));
    std::fs::write(&rp, &record).map_err(|e| io(&rp, e))?;
    std::fs::write(&fp, &frame).map_err(|e| io(&fp, e))?;
    println!(
        "{}",
        Obj::new()
            .str("written", &dir.display().to_string())
            .str("peer_id", &id.peer_id().to_string())
            .str("arch", std::env::consts::ARCH)
            .finish()
    );
    Ok(())
}

fn verify(dir: &Path) -> Result<(), CliError> {
    let (rp, fp) = (dir.join("record.bin"), dir.join("frame.bin"));
    let record = std::fs::read(&rp).map_err(|e| io(&rp, e))?;
    let v = verify_record(&record, crate::unix_now())
        .map_err(|e| CliError::fail(format!("{}: {e}", rp.display())))?;
    let opened = v
        .open_payload(&NETWORK_KEY)
        .map_err(|e| CliError::fail(format!("{}: payload: {e}", rp.display())))?;
    if opened != payload() {
        return Err(CliError::fail(format!("{}: payload differs", rp.display())));
    }
    let mut frame = std::fs::read(&fp).map_err(|e| io(&fp, e))?;
    let h = Header::parse(&frame).map_err(|e| CliError::fail(format!("{}: {e}", fp.display())))?;
    if h.seq != 0x0102_0304_0506_0708 || !h.key_phase {
        return Err(CliError::fail(format!(
            "{}: header fields differ",
            fp.display()
        )));
    }
    let plain = FrameKey::new(&FRAME_KEY)
        .open(&h, &mut frame)
        .map_err(|e| CliError::fail(format!("{}: {e}", fp.display())))?;
    if plain != PLAINTEXT {
        return Err(CliError::fail(format!(
            "{}: plaintext differs",
            fp.display()
        )));
    }
    println!(
        "{}",
        Obj::new()
            .str("verified", &dir.display().to_string())
            .str("peer_id", &v.peer_id().to_string())
            .str("arch", std::env::consts::ARCH)
            .finish()
    );
    Ok(())
}
