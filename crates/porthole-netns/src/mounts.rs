//! Namespace files as mounts: unmounting and unlinking one, removing those a previous run
//! left behind, and reading `/proc/self/mountinfo` to tell whether a path is mounted.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::NetnsError;

/// Unmounts `path` if it is a mount point and unlinks it. Missing files are fine.
pub(crate) fn unmount_and_unlink(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (e.g. the mount never happened); ENOENT: already gone.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Unmount {
                path: path.to_path_buf(),
                source: e.into(),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::RemoveFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Unmounts and removes every file in `dir` (namespaces left behind by a previous run of the
/// agent). Returns the paths removed. A missing directory is empty.
pub fn cleanup_dir(dir: &Path) -> Result<Vec<PathBuf>, NetnsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetnsError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        unmount_and_unlink(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether `path` is currently a mount point of this process's mount namespace (checked in
/// `/proc/self/mountinfo`), for cleanup checks.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.to_string_lossy();
    Ok(info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
