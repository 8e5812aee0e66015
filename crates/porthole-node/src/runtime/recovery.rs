//! The per-pod state file and cleanup of a previous run's leftovers.
//!
//! Each pod directory holds `state.json`: the boot id and, for every container process group
//! ever started, its pgid and the leader's start time (clock ticks since boot, from
//! `/proc/PID/stat`). A process group id alone could have been reused after the old agent
//! died; requiring the same boot and a start time no earlier than the recorded leader's makes
//! it safe to SIGKILL what is found.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One container process group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) pgid: i32,
    pub(crate) start_ticks: u64,
}

/// Contents of `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PodStateFile {
    pub(crate) boot_id: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) netns: Option<String>,
    pub(crate) groups: Vec<Group>,
}

pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `(pgid, start_ticks)` of a live process, from `/proc/PID/stat`.
pub(crate) fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': [0]=state [1]=ppid [2]=pgrp ... [19]=starttime (field 22).
    let pgrp = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((pgrp, start))
}

/// Writes the state file atomically (temp file + rename), so a crash never leaves half a file.
pub(crate) fn write_state(path: &Path, state: &PodStateFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// SIGKILLs every process belonging to one of `groups` (same boot only). Returns how many
/// processes were signalled.
fn kill_groups(groups: &[Group]) -> usize {
    if groups.is_empty() {
        return 0;
    }
    let wanted: HashSet<i32> = groups.iter().map(|g| g.pgid).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((pgrp, start)) = proc_stat(pid) else {
            continue;
        };
        if !wanted.contains(&pgrp) {
            continue;
        }
        let Some(group) = groups.iter().find(|g| g.pgid == pgrp) else {
            continue;
        };
        if start < group.start_ticks {
            // Older than the container's leader: an unrelated process that happens to have
            // the same group id.
            continue;
        }
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Cleans up everything a previous run left under `pods_dir` and `netns_dir`: kills recorded
/// process groups, unmounts and removes namespace files, removes pod directories.
pub(crate) fn cleanup_previous_run(pods_dir: &Path, netns_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let current_boot = boot_id();
    if let Ok(entries) = std::fs::read_dir(pods_dir) {
        for entry in entries.flatten() {
            let dir = entry.path();
            let state_path = dir.join("state.json");
            if let Ok(data) = std::fs::read(&state_path) {
                match serde_json::from_slice::<PodStateFile>(&data) {
                    Ok(state) if state.boot_id == current_boot => {
                        let killed = kill_groups(&state.groups);
                        tracing::info!(
                            pod = %format!("{}/{}", state.namespace, state.name),
                            killed,
                            "cleaned up processes of a pod from a previous run"
                        );
                    }
                    Ok(_) => {
                        tracing::info!(dir = %dir.display(), "state from an earlier boot; no processes to kill");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %state_path.display(), "unreadable pod state file; removing it");
                    }
                }
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("remove pod directory {}", dir.display()))?;
        }
    }
    let removed = porthole_netns::cleanup_dir(netns_dir)
        .with_context(|| format!("clean up network namespaces in {}", netns_dir.display()))?;
    for path in removed {
        tracing::info!(path = %path.display(), "removed network namespace from a previous run");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_is_readable() {
        let me = std::process::id() as i32;
        let (pgrp, start) = proc_stat(me).expect("own stat");
        assert_eq!(pgrp, nix::unistd::getpgrp().as_raw());
        assert!(start > 0);
    }
}
