//! The little of DNS an exit's forwarder needs: is a datagram a query, is another a response.
//! Nothing else of a message is read (the forwarder passes it on, its id swapped).

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

/// Whether `m` is a response (a header with QR set); its id says to which query.
pub fn is_response(m: &[u8]) -> bool {
    m.len() >= HEADER_LEN && m[2] & 0x80 != 0
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
        assert!(is_response(&a));
        assert!(!is_query(&a), "an answer is no query");
        assert!(!is_response(&q));
        let mut two = q;
        two[5] = 2;
        assert!(!is_query(&two));
        let mut notify = q;
        notify[2] = 4 << 3;
        assert!(!is_query(&notify));
        assert!(!is_query(&q[..11]));
        assert!(!is_query(&[0; MAX_QUERY + 1]));
        assert!(!is_response(&a[..11]));
    }
}
