//! The little of DNS an exit's forwarder needs: is a datagram a query, and is another one the
//! answer to it. Nothing else of a message is read (the forwarder passes it on as it is).

/// A DNS header's length.
pub const HEADER_LEN: usize = 12;
/// The largest query taken (EDNS allows larger answers; queries are small).
pub const MAX_QUERY: usize = 512;

/// Whether `m` is a standard query (QR clear, opcode 0) with one question, within
/// [`MAX_QUERY`] bytes.
pub fn is_query(m: &[u8]) -> bool {
    if m.len() < HEADER_LEN || m.len() > MAX_QUERY {
        return false;
    }
    let (qr, opcode) = (m[2] & 0x80, (m[2] >> 3) & 0x0f);
    let questions = u16::from_be_bytes([m[4], m[5]]);
    qr == 0 && opcode == 0 && questions == 1
}

/// Whether `a` is a response carrying query `q`'s id.
pub fn answers(q: &[u8], a: &[u8]) -> bool {
    q.len() >= HEADER_LEN && a.len() >= HEADER_LEN && a[..2] == q[..2] && a[2] & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_their_answers() {
        // id 0x1234, RD, one question: example. A IN.
        let q = [
            0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', 0, 0, 1, 0, 1,
        ];
        assert!(is_query(&q));
        let mut a = q.to_vec();
        a[2] |= 0x80;
        assert!(answers(&q, &a));
        assert!(!is_query(&a), "an answer is no query");
        let mut other = a.clone();
        other[1] ^= 1;
        assert!(!answers(&q, &other), "another id");
        assert!(!answers(&q, &q), "not a response");
        let mut two = q;
        two[5] = 2;
        assert!(!is_query(&two));
        let mut notify = q;
        notify[2] = 4 << 3;
        assert!(!is_query(&notify));
        assert!(!is_query(&q[..11]));
        assert!(!is_query(&[0; MAX_QUERY + 1]));
        assert!(!answers(&q[..3], &a));
    }
}
