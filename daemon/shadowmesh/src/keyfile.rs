//! The identity's key file on disk (its layout is `shadowmesh_crypto::identity`'s), and atomic
//! file writes: load with the permission check, create only where no file is, never replace.

use std::io::Write;
use std::path::{Path, PathBuf};

use shadowmesh_crypto::identity::{KeyFileError, KeyFileProblem, KEY_FILE_LEN};
use shadowmesh_crypto::Identity;
use zeroize::Zeroizing;

/// Loads the key file at `path`, checking its permissions first.
pub fn load(path: &Path) -> Result<Identity, KeyFileError> {
    let err = |problem| KeyFileError {
        path: path.to_owned(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(KeyFileProblem::Io(e)))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(err(KeyFileProblem::Permissions(mode)));
        }
    }
    if meta.len() > 2 * KEY_FILE_LEN as u64 {
        return Err(err(KeyFileProblem::Length(meta.len() as usize)));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(KeyFileProblem::Io(e)))?);
    Identity::from_key_file(&bytes).map_err(err)
}

/// Writes the key file atomically with mode 0600. Fails if `path` exists.
pub fn save_new(id: &Identity, path: &Path) -> Result<(), KeyFileError> {
    let err = |e| KeyFileError {
        path: path.to_owned(),
        problem: KeyFileProblem::Io(e),
    };
    if path.exists() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "refusing to overwrite an existing key file",
        )));
    }
    write_atomic(path, &id.to_key_file(), 0o600).map_err(err)
}

/// Loads `path`, or creates a new identity there if (and only if) the file does not exist.
/// Returns the identity and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(Identity, bool), KeyFileError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity::generate();
            save_new(&id, path)?;
            Ok((id, true))
        }
        _ => Ok((load(path)?, false)),
    }
}

/// Writes `data` to `path` atomically: a temporary file beside it with `mode`, fsync, rename,
/// fsync of the directory. Readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_proto::consts::MLDSA87_PUBLIC_KEY_LEN;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smsh-keytest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_load_and_refuse_bad_files() {
        let d = tmpdir("a");
        let p = d.join("key");
        let (id, created) = load_or_create(&p).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, created) = load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(again.peer_id(), id.peer_id());
        assert_eq!(again.ed25519_public(), id.ed25519_public());

        let good = std::fs::read(&p).unwrap();
        let write = |bytes: &[u8]| {
            let _ = std::fs::remove_file(&p);
            write_atomic(&p, bytes, 0o600).unwrap();
        };
        // Truncated.
        write(&good[..good.len() - 1]);
        let e = load_or_create(&p).unwrap_err();
        assert!(matches!(e.problem, KeyFileProblem::Length(_)), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()));
        assert_eq!(
            std::fs::read(&p).unwrap().len(),
            good.len() - 1,
            "never regenerated"
        );
        // Corrupt.
        let mut bad = good.clone();
        bad[100] ^= 1;
        write(&bad);
        assert!(matches!(
            load(&p).unwrap_err().problem,
            KeyFileProblem::Checksum
        ));
        // Wrong version.
        let mut v2 = good.clone();
        v2[9] = 2;
        write(&v2);
        assert!(matches!(
            load(&p).unwrap_err().problem,
            KeyFileProblem::Version(2)
        ));
        // Not a key file.
        write(b"hello world, not a key");
        assert!(matches!(
            load(&p).unwrap_err().problem,
            KeyFileProblem::Magic
        ));
        // Halves from two identities, checksum recomputed.
        let other = Identity::generate().to_key_file();
        let mut mixed = good[..KEY_FILE_LEN - 32].to_vec();
        mixed[42 + MLDSA87_PUBLIC_KEY_LEN..]
            .copy_from_slice(&other[42 + MLDSA87_PUBLIC_KEY_LEN..KEY_FILE_LEN - 32]);
        let sum = shadowmesh_crypto::sha256(&[&mixed]);
        mixed.extend_from_slice(&sum);
        write(&mixed);
        assert!(matches!(
            load(&p).unwrap_err().problem,
            KeyFileProblem::Inconsistent(_)
        ));
        // World-readable.
        write(&good);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = load(&p).unwrap_err();
            assert!(
                matches!(e.problem, KeyFileProblem::Permissions(0o644)),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
