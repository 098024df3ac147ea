//! The little of DNS the daemon needs: whether a datagram is a query or a response (an exit's
//! forwarder passes them on, ids swapped, nothing else read), and host names as labels.

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

/// The longest DNS label.
pub const MAX_LABEL: usize = 63;

/// Whether `s` is a DNS label as host names use them (RFC 1123): 1-63 of `a-z`, `0-9` and
/// `-`, lowercase, not starting or ending with `-`.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A label made of any name (a system's hostname, a DHCP client's): lowercased, each run of
/// other characters one `-`, trimmed of `-`, cut to [`MAX_LABEL`]. `None` if nothing is left.
pub fn to_label(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len().min(MAX_LABEL));
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= MAX_LABEL {
            break;
        }
    }
    let t = out.trim_matches('-');
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["office", "gw-2", "a", "0ffice", &"x".repeat(63)] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Office", "a.b", "a_b", "é", &"x".repeat(64)] {
            assert!(!is_label(bad), "{bad}");
        }
        assert_eq!(to_label("My Router!").as_deref(), Some("my-router"));
        assert_eq!(to_label("OpenWrt").as_deref(), Some("openwrt"));
        assert_eq!(to_label("--Ünïcode__box--").as_deref(), Some("n-code-box"));
        assert_eq!(to_label("...").as_deref(), None);
        assert_eq!(to_label(&"ab".repeat(50)).map(|l| l.len()), Some(63));
        for s in ["x y", "ÄÖ", "a--b", "1.2.3"] {
            assert!(to_label(s).is_none_or(|l| is_label(&l)), "{s}");
        }
    }

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
