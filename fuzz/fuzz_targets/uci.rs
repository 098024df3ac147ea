//! The UCI parser: any bytes give sections or a line-numbered error, never a panic; and every
//! option value through the CIDR parser that `list route` and `list accept_route` use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::{route, uci};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match uci::parse(text) {
            Ok(sections) => {
                assert!(sections.len() <= uci::MAX_SECTIONS);
                for o in sections.iter().flat_map(|s| &s.options) {
                    let values = match &o.value {
                        uci::Value::Single(v) => std::slice::from_ref(v),
                        uci::Value::List(v) => v.as_slice(),
                    };
                    for v in values {
                        if let Ok(r) = route::parse_cidr(v) {
                            assert!(route::Prefix::new(r.addr, r.prefix_len).is_some());
                        }
                    }
                }
            }
            Err(e) => assert!(e.line <= text.lines().count()),
        }
    }
});
