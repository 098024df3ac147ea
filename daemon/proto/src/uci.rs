//! A strict parser for OpenWrt's UCI configuration syntax (`/etc/config/*`).
//!
//! ```text
//! # comment
//! package 'name'                      (accepted, ignored)
//! config <type> ['<name>']
//!     option <name> <value>
//!     list <name> <value>
//! ```
//! Values are bare words, `'single quoted'` (no escapes; `'it'\''s'` concatenates as in shell)
//! or `"double quoted"` (backslash escapes `\"`, `\\`, `\n`...). Names are `[A-Za-z0-9_]+`.
//! Every error carries its 1-based line number. Written from the UCI file format description,
//! not from libuci; the crate `uci_rs` was set aside because it is lenient about malformed
//! lines and has no line numbers in its errors.
//!
//! Bounded: at most [`MAX_FILE`] bytes, [`MAX_SECTIONS`] sections, [`MAX_OPTIONS`] options
//! per section, [`MAX_LIST`] values per list, [`MAX_VALUE`] bytes per value.

use core::fmt;

/// Largest file accepted.
pub const MAX_FILE: usize = 64 * 1024;
/// Most sections.
pub const MAX_SECTIONS: usize = 64;
/// Most options (and lists) per section.
pub const MAX_OPTIONS: usize = 128;
/// Most values in one list.
pub const MAX_LIST: usize = 256;
/// Longest value.
pub const MAX_VALUE: usize = 4096;

/// A parse error at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UciError {
    /// 1-based line number (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for UciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "line {}: {}", self.line, self.msg)
        }
    }
}

impl std::error::Error for UciError {}

/// An option's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `option name value`.
    Single(String),
    /// `list name value`, repeated.
    List(Vec<String>),
}

/// One option or list, with the line it was (first) defined on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// Option name.
    pub name: String,
    /// Value.
    pub value: Value,
    /// Line of the (first) definition.
    pub line: usize,
}

/// One `config` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Section type.
    pub ty: String,
    /// Section name, if named.
    pub name: Option<String>,
    /// Line of the `config` keyword.
    pub line: usize,
    /// Options in file order.
    pub options: Vec<Opt>,
}

impl Section {
    /// The option called `name`.
    pub fn get(&self, name: &str) -> Option<&Opt> {
        self.options.iter().find(|o| o.name == name)
    }
}

fn err(line: usize, msg: impl Into<String>) -> UciError {
    UciError {
        line,
        msg: msg.into(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a line into words, honouring quotes. Stops at an unquoted `#`.
fn words(line: &str, n: usize) -> Result<Vec<String>, UciError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(err(n, "unterminated single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => cur.push('\n'),
                            Some('t') => cur.push('\t'),
                            Some(c) => cur.push(c),
                            None => return Err(err(n, "backslash at end of line")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(err(n, "unterminated double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => return Err(err(n, "backslash at end of line")),
            },
            c if c.is_control() => {
                return Err(err(n, format!("control character {:#04x}", c as u32)))
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
        if cur.len() > MAX_VALUE {
            return Err(err(n, format!("value longer than {MAX_VALUE} bytes")));
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses a whole UCI file.
pub fn parse(text: &str) -> Result<Vec<Section>, UciError> {
    if text.len() > MAX_FILE {
        return Err(err(0, format!("file larger than {MAX_FILE} bytes")));
    }
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let w = words(raw, n)?;
        let Some(kw) = w.first() else { continue };
        match kw.as_str() {
            "package" => {
                if w.len() != 2 {
                    return Err(err(n, "expected: package <name>"));
                }
            }
            "config" => {
                if !(2..=3).contains(&w.len()) {
                    return Err(err(n, "expected: config <type> ['<name>']"));
                }
                if !valid_name(&w[1]) {
                    return Err(err(n, format!("invalid section type '{}'", w[1])));
                }
                if let Some(name) = w.get(2) {
                    if !valid_name(name) {
                        return Err(err(n, format!("invalid section name '{name}'")));
                    }
                    if sections.iter().any(|s| s.name.as_deref() == Some(name)) {
                        return Err(err(n, format!("section '{name}' defined twice")));
                    }
                }
                if sections.len() >= MAX_SECTIONS {
                    return Err(err(n, format!("more than {MAX_SECTIONS} sections")));
                }
                sections.push(Section {
                    ty: w[1].clone(),
                    name: w.get(2).cloned(),
                    line: n,
                    options: Vec::new(),
                });
            }
            "option" | "list" => {
                let Some(sec) = sections.last_mut() else {
                    return Err(err(n, format!("'{kw}' before any 'config' section")));
                };
                if w.len() != 3 {
                    return Err(err(n, format!("expected: {kw} <name> <value>")));
                }
                let name = &w[1];
                if !valid_name(name) {
                    return Err(err(n, format!("invalid option name '{name}'")));
                }
                let existing = sec.options.iter_mut().find(|o| &o.name == name);
                match (kw.as_str(), existing) {
                    (_, None) => {
                        if sec.options.len() >= MAX_OPTIONS {
                            return Err(err(
                                n,
                                format!("more than {MAX_OPTIONS} options in one section"),
                            ));
                        }
                        sec.options.push(Opt {
                            name: name.clone(),
                            value: if kw == "option" {
                                Value::Single(w[2].clone())
                            } else {
                                Value::List(vec![w[2].clone()])
                            },
                            line: n,
                        });
                    }
                    (
                        "list",
                        Some(Opt {
                            value: Value::List(v),
                            ..
                        }),
                    ) => {
                        if v.len() >= MAX_LIST {
                            return Err(err(n, format!("list '{name}' longer than {MAX_LIST}")));
                        }
                        v.push(w[2].clone());
                    }
                    (_, Some(o)) => {
                        return Err(err(n, format!("'{name}' already defined on line {} (option and list cannot mix, and an option is set once)", o.line)));
                    }
                }
            }
            other => {
                return Err(err(
                    n,
                    format!("unknown keyword '{other}' (expected config, option or list)"),
                ))
            }
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_openwrt_shape() {
        let t = "# ShadowMesh\npackage shadowmesh\n\nconfig shadowmesh 'main'\n\toption enabled '1'\n\toption listen_port 4433 # inline comment\n\tlist bootstrap 'abc@127.0.0.1:1'\n\tlist bootstrap \"def@[::1]:2\"\n\toption name 'it'\\''s'\n\nconfig peer\n\toption x 'a b'\n";
        let s = parse(t).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].ty, "shadowmesh");
        assert_eq!(s[0].name.as_deref(), Some("main"));
        assert_eq!(
            s[0].get("listen_port").unwrap().value,
            Value::Single("4433".into())
        );
        assert_eq!(s[0].get("listen_port").unwrap().line, 6);
        assert_eq!(
            s[0].get("bootstrap").unwrap().value,
            Value::List(vec!["abc@127.0.0.1:1".into(), "def@[::1]:2".into()])
        );
        assert_eq!(
            s[0].get("name").unwrap().value,
            Value::Single("it's".into())
        );
        assert_eq!(s[1].name, None);
        assert_eq!(s[1].get("x").unwrap().value, Value::Single("a b".into()));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("option a 'b'\n", 1, "before any"),
            ("config x\n\toption a 'b\n", 2, "unterminated"),
            ("config x\n\toption a b c\n", 2, "expected"),
            (
                "config x\n\toption a b\n\toption a c\n",
                3,
                "already defined on line 2",
            ),
            ("config x\n\tlist a b\n\toption a c\n", 3, "already defined"),
            ("config x 'y'\nconfig z 'y'\n", 2, "defined twice"),
            ("config x\n\tfrob a b\n", 2, "unknown keyword"),
            ("config x-y\n", 1, "invalid section type"),
            ("config x\n\toption a\u{1}b c\n", 2, "control character"),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.msg.contains(what), "{text:?}: {e}");
        }
        assert!(parse(&"#".repeat(MAX_FILE + 1)).is_err());
    }
}
