//! UPnP IGD: whatever answers our SSDP search, our HTTP requests and our SOAP actions (the
//! router, or anyone on the LAN), parsed; nothing panics, and a control URL taken is on the
//! description's host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::portmap::upnp::{control_url, parse_http, parse_search_reply, parse_soap, Url};

fuzz_target!(|data: &[u8]| {
    let _ = parse_search_reply(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Url::parse(s);
    }
    if let Ok((status, body)) = parse_http(data) {
        let _ = parse_soap(status, &body, Some("NewExternalIPAddress"));
        let _ = parse_soap(status, &body, None);
    }
    let at = Url::parse("http://10.0.0.1:5000/rootDesc.xml").expect("literal");
    if let Ok((ctl, _)) = control_url(data, &at) {
        assert_eq!(ctl.host.ip(), at.host.ip());
    }
});
