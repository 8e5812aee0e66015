//! Process and mount snapshots, and the checks that a stopped cluster left nothing behind.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A process snapshot entry: pid plus start time, so a reused pid is not mistaken for ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId {
    /// Process id.
    pub pid: u32,
    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
    pub start: u64,
}

fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every live descendant of `root` (children, grandchildren, ...), not `root` itself.
pub fn descendants(root: u32) -> BTreeSet<ProcId> {
    let table: Vec<(u32, u32, u64)> = all_pids()
        .into_iter()
        .filter_map(|pid| stat_of(pid).map(|(ppid, start)| (pid, ppid, start)))
        .collect();
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, start) in &table {
            if ppid == parent && found.insert(ProcId { pid, start }) {
                frontier.push(pid);
            }
        }
    }
    found
}

/// Whether a process from a snapshot is still alive (same pid and start time).
pub fn alive(p: ProcId) -> bool {
    stat_of(p.pid).is_some_and(|(_, start)| start == p.start) && !is_zombie(p.pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Processes whose command line contains `needle`, except this test process.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Mounts (of this mount namespace) whose mount point or source contains `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Fails if any process of `before` is still alive, or any process or mount mentions `marker`.
pub fn check_no_leftovers(marker: &Path, before: &BTreeSet<ProcId>) -> Result<()> {
    let mut problems = Vec::new();
    for p in before.iter().filter(|p| alive(**p)) {
        let cmdline = fs::read(format!("/proc/{}/cmdline", p.pid))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        problems.push(format!("process {} still running: {cmdline}", p.pid));
    }
    let marker = marker.to_string_lossy();
    for (pid, cmdline) in processes_mentioning(&marker) {
        problems.push(format!("process {pid} mentions {marker}: {cmdline}"));
    }
    for mount in mounts_mentioning(&marker) {
        problems.push(format!("mount left behind: {mount}"));
    }
    for entry in netns_files(Path::new(&*marker)) {
        problems.push(format!(
            "network namespace file left behind: {}",
            entry.display()
        ));
    }
    // Whoever ran the cluster can remove what it left (the rootless run's pods, uid 0 in
    // their user namespace, write as this user).
    let me = nix::unistd::geteuid().as_raw();
    for (path, uid) in files_owned_by_others(Path::new(&*marker), me) {
        problems.push(format!(
            "{} is owned by uid {uid}, not by uid {me} who ran the cluster",
            path.display()
        ));
    }
    if !problems.is_empty() {
        bail!("left behind after stop:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Files and directories under `dir` (and `dir` itself) whose owner is not `uid`.
pub fn files_owned_by_others(dir: &Path, uid: u32) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != uid {
            found.push((path.clone(), meta.uid()));
        }
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    found
}

/// Entries of every directory named `netns` under `dir` (where the node agent keeps the
/// bind-mounted namespace files of its pods).
pub fn netns_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if d.file_name() == Some(OsStr::new("netns")) {
                found.push(path);
            } else if is_dir {
                stack.push(path);
            }
        }
    }
    found
}
