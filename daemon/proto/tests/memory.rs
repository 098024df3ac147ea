//! Heap cost of the DHT engine's peer-growable tables, measured with a counting allocator.
//! Prints the figures (BENCHMARKS.md quotes them) and asserts the documented bounds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use shadowmesh_proto::dht::node::{Dht, RecordCheck};
use shadowmesh_proto::dht::store::RecordMeta;
use shadowmesh_proto::dht::wire::{Contact, Request, StoreCode};
use shadowmesh_proto::dht::MAX_RECORDS;
use shadowmesh_proto::PeerId;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every allocation is the system allocator's; counting changes nothing it returns.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with layout `l` (above).
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Records are 7,500-byte blobs whose first 80 bytes say what they are (the real check is in
/// the crypto crate; what is measured here is what the engine keeps).
struct Blob;
impl RecordCheck for Blob {
    type Record = std::sync::Arc<[u8]>;
    fn check(&self, r: &Self::Record, _: u64) -> Result<RecordMeta, StoreCode> {
        Ok(RecordMeta {
            key: r[..32].try_into().unwrap(),
            owner: PeerId(r[32..64].try_into().unwrap()),
            seq: u64::from_be_bytes(r[64..72].try_into().unwrap()),
            expires_at: u64::from_be_bytes(r[72..80].try_into().unwrap()),
        })
    }
}

fn id(i: u32) -> PeerId {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 32];
    for c in out.chunks_mut(8) {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        c.copy_from_slice(&x.to_be_bytes());
    }
    PeerId(out)
}

#[test]
fn a_node_that_knows_10000_peers() {
    let base = LIVE.load(Ordering::Relaxed);
    let me = Contact {
        id: PeerId([0x80; 32]),
        ed25519: [0; 32],
        addr: "127.0.0.1:1".parse().unwrap(),
    };
    let mut d = Dht::new(me, Blob, 1);
    let empty = LIVE.load(Ordering::Relaxed) - base;
    let t = Duration::from_secs(1);
    for i in 0..10_000u32 {
        let c = Contact {
            id: id(i),
            ed25519: [1; 32],
            addr: format!("127.0.{}.{}:{}", i / 250, i % 250, 1000 + i % 60_000)
                .parse()
                .unwrap(),
        };
        // Each one contacts us: the routing table and the rate limiter see all of them.
        let _ = d.handle_request(c, Request::Ping, t, 0);
    }
    while d.poll_output().is_some() {}
    let with_peers = LIVE.load(Ordering::Relaxed) - base;
    let table = d.table().len();
    // Fill the record store to its bound with distinct owners, under keys next to our id (a
    // node stores only keys it is among the k closest to) and from many hosts (one host may
    // fill a sixteenth).
    let from = Contact {
        id: id(1),
        ed25519: [0; 32],
        addr: "127.0.0.1:2".parse().unwrap(),
    };
    for i in 0..(MAX_RECORDS as u32 + 10) {
        let mut r = vec![0u8; 7_500];
        r[..32].copy_from_slice(&[0x80; 32]);
        r[28..32].copy_from_slice(&i.to_be_bytes());
        r[32..64].copy_from_slice(&id(i).0);
        r[64..72].copy_from_slice(&1u64.to_be_bytes());
        r[72..80].copy_from_slice(&u64::MAX.to_be_bytes());
        let src = Contact {
            addr: format!("127.1.{}.{}:2000", i / 250, i % 250)
                .parse()
                .unwrap(),
            ..from
        };
        let _ = d.handle_request(src, Request::Store { record: r.into() }, t, 0);
    }
    let full = LIVE.load(Ordering::Relaxed) - base;
    println!("dht_empty_bytes {empty}");
    println!(
        "dht_10000_peers_bytes {with_peers} (routing table {table} entries, rate limiter full)"
    );
    println!("dht_store_full_bytes {full} ({} records)", d.store().len());
    assert_eq!(d.store().len(), MAX_RECORDS);
    assert!(table <= 256 * 20);
    // Documented bounds (BENCHMARKS.md): knowing 10,000 peers costs under 1 MiB, and a full
    // record store adds at most MAX_RECORDS x 7.95 KB (7.5 KB record + ~450 B of bookkeeping:
    // the store's entry with its source address, and the new sources' rate-limiter churn).
    assert!(with_peers < 1 << 20, "{with_peers}");
    assert!(
        (full - with_peers) as usize <= MAX_RECORDS * 7_950,
        "{}",
        full - with_peers
    );
}
