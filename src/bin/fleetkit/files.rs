//! Writing the tool's output files: atomically, with the right mode from the start, and never
//! over an existing file unless asked.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::{CliResult, Failure};

/// Mode of files holding a private key or a secret.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode of certificates and other public files.
pub(crate) const PUBLIC: u32 = 0o644;

/// Creates `dir` (and its parents) if missing.
pub(crate) fn create_dir(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))
}

/// Fails, naming the first of `paths` that exists, unless `force`: checked before anything is
/// generated or written, so a refused command leaves no partial output.
pub(crate) fn refuse_existing(paths: &[PathBuf], force: bool) -> CliResult {
    if force {
        return Ok(());
    }
    for p in paths {
        if p.symlink_metadata().is_ok() {
            return Err(Failure::new(format!(
                "{} exists; not overwriting it (use --force to replace)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode`: into a temporary file in the same directory (created
/// with `mode`, so a secret is never readable by others, not even briefly), fsynced, then put
/// in place and the directory fsynced. A crash leaves the old file or the new one, never a torn
/// one. Without `overwrite` an existing `path` is an error and stays untouched (the file is put
/// in place with a hard link, which fails if the name exists).
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> CliResult {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Failure::new(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let io =
        |e: std::io::Error, p: &Path| Failure::new(format!("cannot write {}: {e}", p.display()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e, path));
    }
    let placed = if overwrite {
        std::fs::rename(&tmp, path)
    } else {
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        linked
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(Failure::new(format!(
                "{} exists; not overwriting it (use --force to replace)",
                path.display()
            )));
        }
        return Err(io(e, path));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(e, dir))
}

/// Reads a text file (`-` is standard input).
pub(crate) fn read_text(path: &Path) -> CliResult<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Failure::new(format!("cannot read standard input: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))
}

/// Reads a file as bytes.
pub(crate) fn read_bytes(path: &Path) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn writes_private_files_and_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write(&p, b"one", PRIVATE, false).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write(&p, b"two", PRIVATE, false).unwrap_err();
        assert!(err.0.contains("exists"), "{}", err.0);
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write(&p, b"three", PRIVATE, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
