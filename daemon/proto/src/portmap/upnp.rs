//! UPnP IGD (Internet Gateway Device), sans-IO: the port-mapping protocol of routers that speak
//! neither PCP nor NAT-PMP. Three exchanges, each built and parsed here, carried by the caller:
//!
//! 1. SSDP: [`SEARCH`] sent to [`SSDP_ADDR`] (multicast UDP); the router answers with the
//!    `LOCATION` of its device description ([`parse_search_reply`]).
//! 2. HTTP `GET` of that description ([`get`]); in it, the control URL of its
//!    `WANIPConnection` (or `WANPPPConnection`) service ([`control_url`]).
//! 3. SOAP over HTTP `POST` to the control URL: `AddPortMapping`, `GetExternalIPAddress`,
//!    `DeletePortMapping` ([`soap`]), each answer read by [`parse_http`] and [`parse_soap`].
//!
//! Only the router is talked to: a location or control URL must name an IPv4 address
//! (never a host name) and the caller checks it is the router's. Every parser returns a typed
//! error on input it does not expect; answers are bounded by [`MAX_ANSWER`].

use core::net::{Ipv4Addr, SocketAddrV4};

use crate::error::Error;

/// Where SSDP searches go (the UPnP multicast group and port).
pub const SSDP_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// The SSDP search for an Internet Gateway Device (answers within `MX` = 2 s).
pub const SEARCH: &[u8] = b"M-SEARCH * HTTP/1.1\r\n\
HOST: 239.255.255.250:1900\r\n\
MAN: \"ssdp:discover\"\r\n\
MX: 2\r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
/// The largest HTTP answer read (a device description is a few KiB).
pub const MAX_ANSWER: usize = 64 * 1024;
/// UPnP error 718: the external port is mapped to someone else.
pub const CONFLICT: u16 = 718;
/// UPnP error 725: the router only grants permanent mappings (lease 0).
pub const ONLY_PERMANENT: u16 = 725;

/// The connection services that map ports, in the order we take them.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// An `http://` URL at an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The server.
    pub host: SocketAddrV4,
    /// The path (with its query), starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http://A.B.C.D[:PORT]/path`; a host name, another scheme or a bad port is an
    /// error.
    pub fn parse(s: &str) -> Result<Url, Error> {
        let rest = s
            .trim()
            .strip_prefix("http://")
            .ok_or(Error::InvalidField("URL scheme (only http://)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (ip, port) = match authority.rsplit_once(':') {
            Some((ip, port)) => (
                ip,
                port.parse::<u16>()
                    .map_err(|_| Error::InvalidField("URL port"))?,
            ),
            None => (authority, 80),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| Error::InvalidField("URL host (only an IPv4 address)"))?;
        if port == 0 || !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidField("URL"));
        }
        Ok(Url {
            host: SocketAddrV4::new(ip, port),
            path: path.to_string(),
        })
    }
}

/// The value of header `name` (case-insensitive) in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The device description's location, from an SSDP answer.
pub fn parse_search_reply(buf: &[u8]) -> Result<Url, Error> {
    let text = core::str::from_utf8(buf).map_err(|_| Error::InvalidField("SSDP answer text"))?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(Error::InvalidField("SSDP status line"));
    }
    Url::parse(header(text, "location").ok_or(Error::InvalidField("SSDP location"))?)
}

/// An HTTP `GET` of `url` (the connection closes after the answer).
pub fn get(url: &Url) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        url.path, url.host
    )
    .into_bytes()
}

/// An HTTP answer read until the server closed the connection: its status and body (a chunked
/// body decoded).
pub fn parse_http(buf: &[u8]) -> Result<(u16, Vec<u8>), Error> {
    if buf.len() > MAX_ANSWER {
        return Err(Error::TooLarge {
            what: "HTTP answer",
            len: buf.len(),
            max: MAX_ANSWER,
        });
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(Error::Truncated {
            need: buf.len() + 1,
            got: buf.len(),
        })?;
    let head =
        core::str::from_utf8(&buf[..end]).map_err(|_| Error::InvalidField("HTTP head text"))?;
    let body = &buf[end + 4..];
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(Error::InvalidField("HTTP status line"))?;
    let chunked = header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match header(head, "content-length") {
        Some(n) => {
            let n: usize = n
                .parse()
                .map_err(|_| Error::InvalidField("HTTP content length"))?;
            let got = body.get(..n).ok_or(Error::Truncated {
                need: n,
                got: body.len(),
            })?;
            Ok((status, got.to_vec()))
        }
        None => Ok((status, body.to_vec())),
    }
}

/// A chunked body, decoded.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Error::Truncated {
                need: b.len() + 2,
                got: b.len(),
            })?;
        let size = core::str::from_utf8(&b[..eol])
            .ok()
            .map(|s| s.split(';').next().unwrap_or("").trim())
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(Error::InvalidField("HTTP chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > b.len() {
            return Err(Error::Truncated {
                need: size,
                got: b.len(),
            });
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

/// The text of the first `<tag>…</tag>` in `doc` (a namespace prefix on the tag allowed).
fn element<'a>(doc: &'a str, tag: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = doc[from..].find(tag) {
        let at = from + i;
        from = at + tag.len();
        let before = doc[..at].rfind('<')?;
        let name = &doc[before + 1..at];
        let opens = name.is_empty() || (name.ends_with(':') && !name.contains(['/', '>', ' ']));
        let rest = &doc[from..];
        if !opens || !rest.starts_with('>') {
            continue;
        }
        let body = &rest[1..];
        let close = body.find("</")?;
        return Some(body[..close].trim());
    }
    None
}

/// From a device description fetched at `location`: the control URL of its port-mapping
/// service and the service's type. The URL must be on the same host as the description.
pub fn control_url(desc: &[u8], location: &Url) -> Result<(Url, &'static str), Error> {
    let doc = core::str::from_utf8(desc).map_err(|_| Error::InvalidField("description text"))?;
    for want in SERVICES {
        for block in doc.split("<service>").skip(1) {
            let block = block.split("</service>").next().unwrap_or("");
            if element(block, "serviceType") != Some(want) {
                continue;
            }
            let ctl = element(block, "controlURL").ok_or(Error::InvalidField("controlURL"))?;
            let url = if ctl.starts_with("http://") {
                Url::parse(ctl)?
            } else {
                let path = if ctl.starts_with('/') {
                    ctl.to_string()
                } else {
                    format!("/{ctl}")
                };
                Url::parse(&format!("http://{}{path}", location.host))?
            };
            if url.host.ip() != location.host.ip() {
                return Err(Error::InvalidField("control URL on another host"));
            }
            return Ok((url, want));
        }
    }
    Err(Error::InvalidField(
        "no WANIPConnection or WANPPPConnection service",
    ))
}

/// A SOAP action on `service` at `url`, with `args` (name, value) in order.
pub fn soap(url: &Url, service: &str, action: &str, args: &[(&str, &str)]) -> Vec<u8> {
    let mut inner = String::new();
    for (k, v) in args {
        inner.push_str(&format!("<{k}>{v}</{k}>"));
    }
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
<u:{action} xmlns:u=\"{service}\">{inner}</u:{action}></s:Body></s:Envelope>\r\n"
    );
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
SOAPAction: \"{service}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        url.host,
        body.len()
    )
    .into_bytes()
}

/// `AddPortMapping` of UDP `external` to `client:internal` for `lease` seconds (0: permanent).
pub fn add_port_mapping(
    url: &Url,
    service: &str,
    external: u16,
    client: Ipv4Addr,
    internal: u16,
    lease: u32,
) -> Vec<u8> {
    let (e, i, c, l) = (
        external.to_string(),
        internal.to_string(),
        client.to_string(),
        lease.to_string(),
    );
    soap(
        url,
        service,
        "AddPortMapping",
        &[
            ("NewRemoteHost", ""),
            ("NewExternalPort", &e),
            ("NewProtocol", "UDP"),
            ("NewInternalPort", &i),
            ("NewInternalClient", &c),
            ("NewEnabled", "1"),
            ("NewPortMappingDescription", "shadowmesh"),
            ("NewLeaseDuration", &l),
        ],
    )
}

/// `DeletePortMapping` of UDP `external`.
pub fn delete_port_mapping(url: &Url, service: &str, external: u16) -> Vec<u8> {
    let e = external.to_string();
    soap(
        url,
        service,
        "DeletePortMapping",
        &[
            ("NewRemoteHost", ""),
            ("NewExternalPort", &e),
            ("NewProtocol", "UDP"),
        ],
    )
}

/// `GetExternalIPAddress`.
pub fn get_external_ip(url: &Url, service: &str) -> Vec<u8> {
    soap(url, service, "GetExternalIPAddress", &[])
}

/// What a SOAP action's answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Soap {
    /// Done; the value of the element asked for, if any.
    Ok(Option<String>),
    /// Refused with this UPnP error code.
    Fault(u16),
}

/// A SOAP answer with HTTP `status` and `body`; `want` names the output element to return.
pub fn parse_soap(status: u16, body: &[u8], want: Option<&str>) -> Result<Soap, Error> {
    let doc = core::str::from_utf8(body).map_err(|_| Error::InvalidField("SOAP answer text"))?;
    match status {
        200 => {
            let v = match want {
                Some(tag) => Some(
                    element(doc, tag)
                        .ok_or(Error::InvalidField("SOAP answer element"))?
                        .to_string(),
                ),
                None => None,
            };
            Ok(Soap::Ok(v))
        }
        500 => element(doc, "errorCode")
            .and_then(|c| c.parse().ok())
            .map(Soap::Fault)
            .ok_or(Error::InvalidField("SOAP fault without an error code")),
        _ => Err(Error::InvalidField("HTTP status of a SOAP answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

    #[test]
    fn urls_name_an_ipv4_address() {
        let u = Url::parse("http://10.7.0.1:5000/rootDesc.xml").unwrap();
        assert_eq!(u.host, "10.7.0.1:5000".parse().unwrap());
        assert_eq!(u.path, "/rootDesc.xml");
        assert_eq!(
            Url::parse("http://192.168.1.1").unwrap().host,
            "192.168.1.1:80".parse().unwrap()
        );
        for bad in [
            "https://10.0.0.1/",
            "http://router.lan/x",
            "http://10.0.0.1:0/",
            "http://10.0.0.1:99999/",
            "http://10.0.0.1/a b",
            "",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_search_answer_gives_the_description_and_it_the_control_url() {
        let reply = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://10.7.0.1:5000/rootDesc.xml\r\n\r\n";
        let loc = parse_search_reply(reply).unwrap();
        assert_eq!(loc.path, "/rootDesc.xml");
        assert!(
            parse_search_reply(b"NOTIFY * HTTP/1.1\r\nLocation: http://1.2.3.4/\r\n\r\n").is_err()
        );
        assert!(parse_search_reply(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        let (ctl, service) = control_url(DESC.as_bytes(), &loc).unwrap();
        assert_eq!(ctl, Url::parse("http://10.7.0.1:5000/ctl/IPConn").unwrap());
        assert_eq!(service, "urn:schemas-upnp-org:service:WANIPConnection:1");
        // A control URL on another host is refused (only the router is talked to).
        let other = DESC.replace("/ctl/IPConn", "http://10.9.9.9:80/ctl");
        assert!(control_url(other.as_bytes(), &loc).is_err());
        let none = DESC.replace("WANIPConnection", "WANEthernetLinkConfig");
        assert!(control_url(none.as_bytes(), &loc).is_err());
    }

    #[test]
    fn http_answers_with_a_length_or_in_chunks() {
        let (s, b) =
            parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more").unwrap();
        assert_eq!((s, &b[..]), (200, &b"hello"[..]));
        let chunked = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked).unwrap(), (500, b"abcdefg".to_vec()));
        assert_eq!(
            parse_http(b"HTTP/1.0 200 OK\r\n\r\nrest").unwrap().1,
            b"rest"
        );
        assert!(parse_http(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(
            parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(
            parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab").is_err()
        );
        assert!(parse_http(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_http(b"HTTP/1.1 200 OK").is_err());
    }

    #[test]
    fn soap_requests_and_answers() {
        let ctl = Url::parse("http://10.7.0.1:5000/ctl/IPConn").unwrap();
        let svc = SERVICES[1];
        let req = add_port_mapping(&ctl, svc, 4433, Ipv4Addr::new(10, 7, 0, 2), 4433, 7200);
        let text = String::from_utf8(req).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 10.7.0.1:5000\r\n"));
        assert!(head.contains(&format!("SOAPAction: \"{svc}#AddPortMapping\"")));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(
            body.contains("<NewExternalPort>4433</NewExternalPort><NewProtocol>UDP</NewProtocol>")
        );
        assert!(body.contains("<NewInternalClient>10.7.0.2</NewInternalClient>"));
        assert!(body.contains("<NewLeaseDuration>7200</NewLeaseDuration>"));

        let ok = b"<s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"x\"><NewExternalIPAddress>198.20.7.2</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(
            parse_soap(200, ok, Some("NewExternalIPAddress")).unwrap(),
            Soap::Ok(Some("198.20.7.2".into()))
        );
        assert_eq!(parse_soap(200, b"<x/>", None).unwrap(), Soap::Ok(None));
        assert!(parse_soap(200, b"<x/>", Some("NewExternalIPAddress")).is_err());
        let fault = b"<s:Envelope><s:Body><s:Fault><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        assert_eq!(parse_soap(500, fault, None).unwrap(), Soap::Fault(CONFLICT));
        assert!(parse_soap(500, b"<x/>", None).is_err());
        assert!(parse_soap(404, b"", None).is_err());
    }
}
