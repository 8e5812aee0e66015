//! Temporary directories and files, and paths into the repository (`examples/`).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

/// A unique directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/porthole-test-PREFIX-PID-N-NANOS`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        TempDir::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates `BASE/porthole-test-PREFIX-PID-N-NANOS`.
    pub fn new_in(base: &Path, prefix: &str) -> Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!(
            "porthole-test-{prefix}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A path for `-f`: `REPO/examples/NAME`.
pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// The workspace root: `PORTHOLE_TEST_REPO` when set (the rootless run uses a copy its user
/// can read), else two levels above this crate.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTHOLE_TEST_REPO") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: impl AsRef<OsStr>, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name.as_ref());
    fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}
