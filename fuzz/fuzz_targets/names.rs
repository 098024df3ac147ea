//! Names: a member's LAN_NAMES message, a DHCP lease file and OpenWrt's dhcp configuration
//! are parsed without a panic, and whatever comes out is made of DNS labels that encode back
//! to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowmesh_proto::dns::{is_label, to_label};
use shadowmesh_proto::lan_names::{emit, from_dhcp_config, from_leases, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = parse(data) {
        assert!(list.iter().all(|n| is_label(&n.label)));
        let mut again = Vec::new();
        emit(&list, &mut again).expect("a parsed list encodes");
        assert_eq!(parse(&again).as_ref(), Ok(&list));
    }
    let text = String::from_utf8_lossy(data);
    for n in from_leases(&text).iter().chain(&from_dhcp_config(&text)) {
        assert!(is_label(&n.label));
    }
    if let Some(l) = to_label(&text) {
        assert!(is_label(&l));
    }
});
