//! `--etc-hosts`: service names in the hosts file, in a marked block that is removed on exit.
//!
//! ```text
//! # BEGIN porthole forward (pid 4242)
//! 127.0.0.2 db db.shop db.shop.svc.cluster.local
//! # END porthole forward (pid 4242)
//! ```
//!
//! The pid in the markers lets a later run remove the block of a run that was killed (SIGKILL,
//! a crash) without touching the block of a run that is still going. The file is rewritten in
//! place, not replaced by rename: /etc/hosts is often a bind mount (containers), which a rename
//! cannot replace.

use std::path::{Path, PathBuf};

const BEGIN: &str = "# BEGIN porthole forward (pid ";
const END: &str = "# END porthole forward (pid ";

/// A block this process wrote; [`HostsBlock::remove`] takes it out again.
#[derive(Debug)]
pub struct HostsBlock {
    path: PathBuf,
    pid: u32,
}

/// Why the hosts file could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Reading failed.
    #[error(
        "cannot read the hosts file {path} (run as root to change /etc/hosts, or set --hosts-file)"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed.
    #[error("cannot write the hosts file {path} (run as root to change /etc/hosts, or set --hosts-file)")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn pid_of_marker(line: &str, marker: &str) -> Option<u32> {
    line.strip_prefix(marker)?.strip_suffix(')')?.parse().ok()
}

/// `text` without the blocks for which `drop_block(pid)` is true. An unterminated block (a
/// write cut short) is dropped up to the end of the file.
fn without_blocks(text: &str, drop_block: impl Fn(u32) -> bool) -> String {
    let mut out = String::new();
    let mut skipping: Option<u32> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        match skipping {
            Some(pid) => {
                if pid_of_marker(trimmed, END) == Some(pid) {
                    skipping = None;
                }
            }
            None => match pid_of_marker(trimmed, BEGIN) {
                Some(pid) if drop_block(pid) => skipping = Some(pid),
                _ => out.push_str(line),
            },
        }
    }
    out
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read(path: &Path) -> Result<String, HostsError> {
    std::fs::read_to_string(path).map_err(|source| HostsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), HostsError> {
    std::fs::write(path, text).map_err(|source| HostsError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Removes blocks left by runs that no longer exist. Returns how many were removed.
pub fn clean_stale(path: &Path) -> Result<usize, HostsError> {
    let text = read(path)?;
    let me = std::process::id();
    let cleaned = without_blocks(&text, |pid| pid != me && !process_alive(pid));
    let removed = text.matches(BEGIN).count() - cleaned.matches(BEGIN).count();
    if removed > 0 {
        write(path, &cleaned)?;
    }
    Ok(removed)
}

/// Appends a block of `(address, names)` lines for this process.
pub fn add(path: &Path, lines: &[(String, Vec<String>)]) -> Result<HostsBlock, HostsError> {
    let pid = std::process::id();
    let mut text = without_blocks(&read(path)?, |p| p == pid);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{BEGIN}{pid})\n"));
    for (address, names) in lines {
        text.push_str(&format!("{address} {}\n", names.join(" ")));
    }
    text.push_str(&format!("{END}{pid})\n"));
    write(path, &text)?;
    Ok(HostsBlock {
        path: path.to_path_buf(),
        pid,
    })
}

impl HostsBlock {
    /// Takes this process's block out of the file.
    pub fn remove(self) -> Result<(), HostsError> {
        let text = read(&self.path)?;
        write(&self.path, &without_blocks(&text, |p| p == self.pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_cut_out_by_pid() {
        let text = "127.0.0.1 localhost\n\
                    # BEGIN porthole forward (pid 7)\n127.0.0.2 a a.ns\n# END porthole forward (pid 7)\n\
                    # BEGIN porthole forward (pid 8)\n127.0.0.3 b\n# END porthole forward (pid 8)\n\
                    ::1 localhost\n";
        assert_eq!(
            without_blocks(text, |p| p == 7),
            "127.0.0.1 localhost\n\
             # BEGIN porthole forward (pid 8)\n127.0.0.3 b\n# END porthole forward (pid 8)\n\
             ::1 localhost\n"
        );
        assert_eq!(
            without_blocks(text, |_| true),
            "127.0.0.1 localhost\n::1 localhost\n"
        );
        // Cut short: everything after the begin marker goes.
        assert_eq!(
            without_blocks("a\n# BEGIN porthole forward (pid 9)\n127.0.0.2 x\n", |_| {
                true
            }),
            "a\n"
        );
    }
}
