use super::*;
use std::cell::Cell;

struct Count(Rc<Cell<usize>>, Rc<Cell<usize>>);
impl FrameSink for Count {
    fn frame(&self, _: SocketAddr, f: &mut [u8]) {
        assert!(is_frame(f));
        self.0.set(self.0.get() + 1);
    }
    fn end_of_batch(&self) {
        self.1.set(self.1.get() + 1);
    }
}

fn frame() -> [u8; 40] {
    let mut f = [0u8; 40];
    f[..6].copy_from_slice(&SMSH_PREFIX);
    f
}

#[test]
fn frames_are_taken_out_and_quic_kept_in_order() {
    let seen = Rc::new(Cell::new(0usize));
    let sink: Sink = Rc::new(Count(seen.clone(), Rc::new(Cell::new(0))));
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let frame = frame();
    let quic_a = [0x40u8; 40];
    let quic_b = [0x41u8; 25];
    // GRO batch: frame, QUIC, frame, QUIC (shorter, last).
    let mut buf = Vec::new();
    buf.extend_from_slice(&frame);
    buf.extend_from_slice(&quic_a);
    buf.extend_from_slice(&frame);
    buf.extend_from_slice(&quic_b);
    let len = buf.len();
    let kept = take_frames(&mut buf, len, 40, Some(&sink), addr, &mut |_| {});
    assert_eq!(seen.get(), 2);
    assert_eq!(kept, 65);
    assert_eq!(&buf[..40], &quic_a);
    assert_eq!(&buf[40..65], &quic_b);
    // A 0x53 first byte alone is QUIC (a short header), not a frame.
    let mut short = [
        0x53u8, 0x00, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let l = short.len();
    assert_eq!(
        take_frames(&mut short, l, l, Some(&sink), addr, &mut |_| {}),
        l
    );
    // Every segment a frame: nothing for quinn.
    let mut two = [frame, frame].concat();
    assert_eq!(
        take_frames(&mut two, 80, 40, Some(&sink), addr, &mut |_| {}),
        0
    );
    assert_eq!(seen.get(), 4);
    // Without a sink, frames are dropped, not handed to quinn.
    assert_eq!(take_frames(&mut two, 80, 40, None, addr, &mut |_| {}), 0);
    assert_eq!(seen.get(), 4);
}

/// What the QUIC driver gets from one `poll_recv` (nothing after 50 ms): (source, datagram).
async fn quinn_takes(demux: &DemuxSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut b = [[0u8; 100]; 4];
    let mut meta = [RecvMeta::default(); 4];
    let n = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        std::future::poll_fn(|cx| {
            let mut iovs = b.each_mut().map(|x| IoSliceMut::new(x));
            demux.poll_recv(cx, &mut iovs, &mut meta)
        }),
    )
    .await;
    let n = match n {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    (0..n)
        .map(|i| (meta[i].addr, b[i][..meta[i].len].to_vec()))
        .collect()
}

/// The receiver task on a real socket: frames reach the sink registered for that socket
/// (and no other), QUIC datagrams wait in the stash for quinn's `poll_recv`, in order,
/// and a full stash makes the receiver wait (nothing dropped) until quinn takes from it.
#[test]
fn receiver_splits_frames_from_quic_datagrams() {
    crate::block_on_local(async {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = std_sock.local_addr().unwrap();
        let runtime = quinn::default_runtime().unwrap();
        let demux = DemuxSocket::new(runtime.wrap_udp_socket(std_sock).unwrap(), true).unwrap();
        let (seen, ends) = (Rc::new(Cell::new(0usize)), Rc::new(Cell::new(0usize)));
        set_sink(at, Some(Rc::new(Count(seen.clone(), ends.clone()))));
        // A second sink, for another socket, sees nothing.
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let stray = Rc::new(Cell::new(0usize));
        set_sink(
            other,
            Some(Rc::new(Count(stray.clone(), Rc::new(Cell::new(0))))),
        );
        tokio::task::spawn_local(demux.clone().receive());

        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quic: Vec<Vec<u8>> = (0..3u8).map(|i| vec![0x40 | i; 30 + i as usize]).collect();
        peer.send_to(&frame(), at).unwrap();
        peer.send_to(&quic[0], at).unwrap();
        peer.send_to(&frame(), at).unwrap();
        peer.send_to(&quic[1], at).unwrap();
        peer.send_to(&quic[2], at).unwrap();

        // quinn's side: poll_recv until the three QUIC datagrams came, in order.
        let mut got: Vec<Vec<u8>> = vec![];
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 3 && tokio::time::Instant::now() < end {
            for (from, d) in quinn_takes(&demux).await {
                assert_eq!(from, peer.local_addr().unwrap());
                got.push(d);
            }
        }
        assert_eq!(got, quic);
        assert_eq!(seen.get(), 2);
        assert!(ends.get() >= 1);
        assert_eq!(stray.get(), 0);

        // Nobody takes QUIC datagrams: the receiver stops reading at the stash's bound and
        // leaves the rest in the socket, frames included; nothing is dropped. Once quinn
        // takes what waits, everything comes through, in order.
        let extra = 20;
        for i in 0..STASH_LEN + extra {
            peer.send_to(&[0x40 | (i % 16) as u8; 30], at).unwrap();
            if i % 32 == 31 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        peer.send_to(&frame(), at).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        {
            let st = demux.stash();
            assert!(
                st.full(),
                "the receiver read past a full stash? {}",
                st.queue.len()
            );
            assert!(st.queue.len() < STASH_LEN + RX_BUFS);
        }
        assert_eq!(seen.get(), 2, "a frame behind a full stash was read");
        let mut taken = 0usize;
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while (taken < STASH_LEN + extra || seen.get() < 3) && tokio::time::Instant::now() < end {
            for (_, d) in quinn_takes(&demux).await {
                assert_eq!(d[0], 0x40 | (taken % 16) as u8, "out of order");
                taken += 1;
            }
        }
        assert_eq!(taken, STASH_LEN + extra);
        assert_eq!(seen.get(), 3);
        assert_eq!(demux.stash_dropped(), 0);
        set_sink(at, None);
        set_sink(other, None);
    })
    .expect("tokio runtime");
}

#[test]
fn issued_connection_ids_never_look_like_frames() {
    let mut g = NoMagicCids(quinn_proto::HashedConnectionIdGenerator::from_key(7));
    for _ in 0..10_000 {
        let c = g.generate_cid();
        assert!(!c.starts_with(b"MSH"));
        assert!(g.validate(&c).is_ok());
    }
}
