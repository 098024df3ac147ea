//! A minimal JSON object writer for CLI and control-socket output (serde would cost ~100 KB of
//! flash for what is a handful of flat objects).

use std::fmt::Write;

/// Builds one JSON object, field by field, in insertion order.
#[derive(Debug, Default)]
pub struct Obj {
    buf: String,
}

fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Obj {
    /// An empty object.
    pub fn new() -> Self {
        Obj::default()
    }

    fn key(&mut self, k: &str) {
        self.buf.push(if self.buf.is_empty() { '{' } else { ',' });
        escape_into(&mut self.buf, k);
        self.buf.push(':');
    }

    /// Adds a string field.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        escape_into(&mut self.buf, v);
        self
    }

    /// Adds a number field.
    pub fn num(mut self, k: &str, v: impl Into<f64>) -> Self {
        self.key(k);
        let v = v.into();
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            let _ = write!(self.buf, "{}", v as i64);
        } else {
            let _ = write!(self.buf, "{v:.3}");
        }
        self
    }

    /// Adds an unsigned integer field (exact beyond 2^53).
    pub fn uint(mut self, k: &str, v: u64) -> Self {
        self.key(k);
        let _ = write!(self.buf, "{v}");
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// Adds a field holding already-encoded JSON.
    pub fn raw(mut self, k: &str, json: &str) -> Self {
        self.key(k);
        self.buf.push_str(json);
        self
    }

    /// The finished object.
    pub fn finish(mut self) -> String {
        if self.buf.is_empty() {
            self.buf.push('{');
        }
        self.buf.push('}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_orders() {
        let s = Obj::new()
            .str("a", "x\"y\\z\n\u{1}")
            .num("n", 1.5)
            .uint("u", u64::MAX)
            .bool("b", true)
            .finish();
        assert_eq!(
            s,
            r#"{"a":"x\"y\\z\n\u0001","n":1.500,"u":18446744073709551615,"b":true}"#
        );
        assert_eq!(Obj::new().finish(), "{}");
    }
}
