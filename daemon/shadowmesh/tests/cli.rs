//! The `shadowmesh` binary: `keygen`, `id --json`, and the key-file refusals users will see.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadowmesh"))
}

fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":\"");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + key.len();
    json[start..].split('"').next().unwrap()
}

#[test]
fn keygen_then_id_json_and_refusals() {
    let dir = std::env::temp_dir().join(format!("smsh-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("node.key");

    let out = bin().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(printed.len(), 64);

    let out = bin()
        .args(["id", "--json", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let j = String::from_utf8(out.stdout).unwrap();
    let pid = field(&j, "peer_id");
    assert_eq!(pid, printed);
    assert_eq!(field(&j, "ed25519_public_key").len(), 64);
    let mldsa = field(&j, "mldsa87_public_key");
    assert_eq!(mldsa.len(), 2 * 2592);
    // PeerId = SHA-256(ML-DSA-87 public key), recomputed independently of the crate's code path.
    let pk: Vec<u8> = (0..mldsa.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&mldsa[i..i + 2], 16).unwrap())
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, &pk);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, pid);
    // 10.100.X.Y from the PeerId's first two bytes (unless those are reserved).
    let (x, y) = (
        u8::from_str_radix(&pid[0..2], 16).unwrap(),
        u8::from_str_radix(&pid[2..4], 16).unwrap(),
    );
    if (x, y) != (0, 0) && (x, y) != (255, 255) {
        assert_eq!(field(&j, "ipv4"), format!("10.100.{x}.{y}"));
    }
    // IPv6 lies in the mesh's /48, derived from the network key: empty without one.
    assert_eq!(field(&j, "ipv6"), "");
    let in_mesh = |nk: &str| {
        let out = bin()
            .args(["id", "--json", "--network-key", nk, "--key"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        field(&String::from_utf8(out.stdout).unwrap(), "ipv6").to_string()
    };
    let (a, b) = (in_mesh(&"11".repeat(32)), in_mesh(&"22".repeat(32)));
    let a6: std::net::Ipv6Addr = a.parse().unwrap();
    assert_eq!(a6.octets()[0], 0xfd);
    // The last 80 bits are the PeerId's first 80; the /48 differs between meshes.
    let want: Vec<u8> = (0..20)
        .step_by(2)
        .map(|i| u8::from_str_radix(&pid[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(&a6.octets()[6..], &want[..]);
    let b6: std::net::Ipv6Addr = b.parse().unwrap();
    assert_eq!(&b6.octets()[6..], &want[..]);
    assert_ne!(a6.octets()[..6], b6.octets()[..6]);

    // Never overwrite an identity.
    let out = bin().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));

    // A truncated key file: error names the file and the problem, exit 1, file untouched.
    let bytes = std::fs::read(&key).unwrap();
    std::fs::write(&key, &bytes[..100]).unwrap();
    let out = bin().args(["id", "--key"]).arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(key.to_str().unwrap()) && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(std::fs::read(&key).unwrap().len(), 100);

    // Usage errors exit 2.
    assert_eq!(
        bin().arg("frobnicate").output().unwrap().status.code(),
        Some(2)
    );
    assert_eq!(bin().args(["id"]).output().unwrap().status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
