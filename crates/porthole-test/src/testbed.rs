//! Simulated hosts for multi-host tests: each host is a network namespace of its own with one
//! interface (`eth0`, an address from 198.18.0.0/24), joined by a veth pair to a bridge that
//! lives in a further namespace of its own. Nothing is created in the machine's root namespace
//! (the veth pairs are made directly inside the namespaces), and no namespace has a default
//! route, so traffic can only go to the other hosts and to each host's loopback.
//!
//! Faults are applied where they happen on real networks:
//! - [`Host::netem`]: delay, loss, reordering on the host's link (`tc qdisc ... netem`);
//! - [`Testbed::partition`]: packets between two hosts vanish silently (an nft set of
//!   partitioned peers, dropped on input at both ends: sockets stay open and hear nothing);
//! - [`Host::link_down`]: the host's link goes down (`ip link set eth0 down`).
//!
//! [`Testbed`] removes everything on drop, also when the test fails: every process still in a
//! host namespace is killed, then the namespaces go. [`Testbed::new`] also removes the
//! namespaces of earlier test processes that died without cleaning up (`kill -9` of `cargo
//! test`), recognised by the pid in their name. [`leftovers`] lists what remains of a testbed.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Every namespace a testbed creates is named `PREFIX<pid>x<n>-<role>`.
pub const PREFIX: &str = "phtb";
/// The hosts' subnet (inside 198.18.0.0/15, the benchmarking range of RFC 2544).
pub const SUBNET_PREFIX_LEN: u8 = 24;
const FIRST_HOST: u8 = 10;
const NFT_TABLE: &str = "porthole_testbed";
/// The NAT router's table ([`Testbed::add_behind_nat`]).
const NAT_TABLE: &str = "porthole_nat";
/// What [`Host::netem`] fails with on a kernel built without netem, for options it cannot
/// emulate there.
pub const NO_NETEM: &str = "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is off) and \
    only `delay Nms` and `loss P%` are emulated without it";

/// Emulated delays (kernels without netem), by host namespace.
fn emulated() -> &'static std::sync::Mutex<std::collections::HashMap<String, crate::delay::Delay>> {
    static EMULATED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, crate::delay::Delay>>,
    > = std::sync::OnceLock::new();
    EMULATED.get_or_init(Default::default)
}

/// A set of simulated hosts on one switch.
pub struct Testbed {
    id: String,
    bridge_ns: String,
    hosts: Vec<Host>,
}

/// One simulated host: a network namespace with `eth0` on the testbed's switch.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

/// Runs `cmd`, failing with its stderr unless it exits 0; returns stdout.
fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: run {cmd:?} (is iproute2/nftables installed?)"))?;
    ensure_success(what, cmd, &out)
}

fn ensure_success(what: &str, cmd: &Command, out: &Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what}: {cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Network namespaces (`ip netns` names) whose name starts with `prefix`.
pub fn leftovers(prefix: &str) -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The identity (nsfs inode) of a network namespace: of a name in `/run/netns`, or of a
/// process's `/proc/PID/ns/net`.
fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Kills every process in the namespace, then deletes it. Best effort: used on teardown paths.
/// A process that entered after `ip netns pids` looked (an `ip netns exec` racing the
/// teardown) would keep the deleted namespace alive, so the processes are found again by the
/// namespace's inode after the name is gone.
fn remove_netns(netns: &str) {
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    let inode = netns_inode(&format!("/run/netns/{netns}"));
    if let Ok(out) = ip(&["netns", "pids", netns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                kill(pid);
            }
        }
    }
    let _ = ip(&["netns", "delete", netns]).output();
    let Some(inode) = inode else { return };
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if netns_inode(&format!("/proc/{pid}/ns/net")) == Some(inode) {
            kill(pid);
        }
    }
}

/// Removes testbed namespaces of test processes that are gone.
fn remove_stale() {
    for name in leftovers(PREFIX) {
        let pid = name[PREFIX.len()..]
            .split('x')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                remove_netns(&name);
            }
        }
    }
}

impl Testbed {
    /// Creates one host per name (`198.18.0.10`, `.11`, ... in that order) on one switch.
    /// Needs root (CI is root).
    pub fn new(names: &[&str]) -> Result<Testbed> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = Testbed {
            bridge_ns: format!("{id}-switch"),
            id,
            hosts: Vec::new(),
        };
        // On failure half-way, dropping `bed` removes what was created.
        bed.create_switch()?;
        for (i, name) in names.iter().enumerate() {
            ensure!(
                !name.is_empty() && name.len() <= 20 && !name.contains(['/', ' ']),
                "host name {name:?}: use 1-20 characters without '/' or spaces"
            );
            let octet = FIRST_HOST
                .checked_add(u8::try_from(i)?)
                .filter(|o| *o < 255)
                .ok_or_else(|| anyhow!("too many hosts for one /24"))?;
            bed.add_host(name, i, Ipv4Addr::new(198, 18, 0, octet))?;
        }
        Ok(bed)
    }

    fn create_switch(&mut self) -> Result<()> {
        let ns = self.bridge_ns.clone();
        run(
            "create the switch namespace",
            &mut ip(&["netns", "add", &ns]),
        )?;
        self.in_switch("bring up the switch loopback", &["link", "set", "lo", "up"])?;
        self.in_switch(
            "create the switch bridge",
            &["link", "add", "br0", "type", "bridge"],
        )?;
        self.in_switch("bring up the bridge", &["link", "set", "br0", "up"])?;
        Ok(())
    }

    fn in_switch(&self, what: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.bridge_ns.as_str()];
        all.extend_from_slice(args);
        run(what, &mut ip(&all))
    }

    /// Creates host `name` with address `addr`: its namespace, and a veth pair whose `eth0`
    /// end is in it and whose `port` end is in namespace `peer_ns` (the switch or a router).
    /// Both ends are created inside their namespaces: nothing appears in the root namespace.
    fn new_host(&mut self, name: &str, addr: Ipv4Addr, port: &str, peer_ns: &str) -> Result<Host> {
        let host = Host {
            name: name.to_string(),
            netns: format!("{}-{name}", self.id),
            ip: addr,
        };
        run(
            &format!("create host {name}"),
            &mut ip(&["netns", "add", &host.netns]),
        )?;
        self.hosts.push(host.clone());
        run(
            &format!("create the link of host {name}"),
            &mut ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host.netns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                peer_ns,
            ]),
        )?;
        Ok(host)
    }

    /// A new host's name must be usable in a namespace name and not taken.
    fn check_new_name(&self, name: &str) -> Result<()> {
        ensure!(
            !name.is_empty() && name.len() <= 20 && !name.contains(['/', ' ']),
            "host name {name:?}: use 1-20 characters without '/' or spaces"
        );
        ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "the testbed already has a host {name:?}"
        );
        Ok(())
    }

    fn add_host(&mut self, name: &str, index: usize, addr: Ipv4Addr) -> Result<()> {
        let port = format!("port{index}");
        let bridge_ns = self.bridge_ns.clone();
        let host = self.new_host(name, addr, &port, &bridge_ns)?;
        self.in_switch(
            "attach a host to the bridge",
            &["link", "set", &port, "master", "br0", "up"],
        )?;
        let cidr = format!("{addr}/{SUBNET_PREFIX_LEN}");
        host.ip_cmd("address the host", &["addr", "add", &cidr, "dev", "eth0"])?;
        host.ip_cmd("bring up eth0", &["link", "set", "eth0", "up"])?;
        host.ip_cmd("bring up loopback", &["link", "set", "lo", "up"])?;
        host.install_fault_rules()?;
        Ok(())
    }

    /// Adds one more host on the switch (the next address after the others).
    pub fn add(&mut self, name: &str) -> Result<Host> {
        self.check_new_name(name)?;
        let index = self.hosts.len();
        let octet = self
            .hosts
            .iter()
            .filter(|h| h.ip.octets()[..3] == [198, 18, 0])
            .map(|h| h.ip.octets()[3])
            .max()
            .unwrap_or(FIRST_HOST - 1)
            .checked_add(1)
            .filter(|o| *o < 255)
            .ok_or_else(|| anyhow!("too many hosts for one /24"))?;
        self.add_host(name, index, Ipv4Addr::new(198, 18, 0, octet))?;
        Ok(self.host(name).clone())
    }

    /// Adds host `name` on a private network of its own behind `router` (an existing host),
    /// which masquerades its traffic to the switch like a home or office NAT: `name` reaches
    /// every host (from `router`'s address), and no host can open a connection to `name`,
    /// which has an address in 198.19.0.0/16 that nobody else routes. Only connections
    /// `name` opened get their replies through (the router forwards nothing else).
    pub fn add_behind_nat(&mut self, name: &str, router: &str) -> Result<Host> {
        self.check_new_name(name)?;
        let router = self.host(router).clone();
        let lan = u8::try_from(
            self.hosts
                .iter()
                .filter(|h| h.ip.octets()[..2] == [198, 19])
                .count(),
        )
        .ok()
        .filter(|n| *n < 250)
        .ok_or_else(|| anyhow!("too many hosts behind NAT"))?;
        let (gateway, addr) = (
            Ipv4Addr::new(198, 19, lan, 1),
            Ipv4Addr::new(198, 19, lan, 2),
        );
        let port = format!("lan{lan}");
        let host = self.new_host(name, addr, &port, &router.netns)?;
        router.ip_cmd(
            "address the NAT side",
            &["addr", "add", &format!("{gateway}/24"), "dev", &port],
        )?;
        router.ip_cmd("bring up the NAT side", &["link", "set", &port, "up"])?;
        host.ip_cmd(
            "address the host behind NAT",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
        host.ip_cmd("bring up eth0", &["link", "set", "eth0", "up"])?;
        host.ip_cmd("bring up loopback", &["link", "set", "lo", "up"])?;
        // Only the switch's subnet, through the router: still no route out of the testbed.
        host.ip_cmd(
            "route to the switch through the NAT",
            &[
                "route",
                "add",
                &format!("198.18.0.0/{SUBNET_PREFIX_LEN}"),
                "via",
                &gateway.to_string(),
            ],
        )?;
        host.install_fault_rules()?;
        router.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        router.nft(&format!(
            "add table ip {NAT_TABLE}\n\
             add chain ip {NAT_TABLE} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
             add chain ip {NAT_TABLE} forward {{ type filter hook forward priority 0; policy drop; }}\n\
             add rule ip {NAT_TABLE} forward ct state established,related accept\n\
             add rule ip {NAT_TABLE} forward iifname \"{port}\" oifname \"eth0\" accept\n\
             add rule ip {NAT_TABLE} postrouting oifname \"eth0\" ip saddr {addr} masquerade\n"
        ))?;
        Ok(host)
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("testbed has no host {name:?}"))
    }

    /// All hosts, in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The prefix of every namespace of this testbed (for [`leftovers`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Packets between `a` and `b` are dropped silently, both ways, until [`Testbed::heal`].
    pub fn partition(&self, a: &str, b: &str) -> Result<()> {
        let (a, b) = (self.host(a), self.host(b));
        a.nft(&format!(
            "add element inet {NFT_TABLE} partitioned {{ {} }}\n",
            b.ip
        ))?;
        b.nft(&format!(
            "add element inet {NFT_TABLE} partitioned {{ {} }}\n",
            a.ip
        ))
    }

    /// Ends a [`Testbed::partition`] between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        let (a, b) = (self.host(a), self.host(b));
        a.nft(&format!(
            "delete element inet {NFT_TABLE} partitioned {{ {} }}\n",
            b.ip
        ))?;
        b.nft(&format!(
            "delete element inet {NFT_TABLE} partitioned {{ {} }}\n",
            a.ip
        ))
    }

    /// Kills every process on the hosts and removes all namespaces; returns what could not be
    /// removed. Drop does the same.
    pub fn teardown(&mut self) -> Result<()> {
        for host in self.hosts.drain(..) {
            host.clear_emulated();
            remove_netns(&host.netns);
        }
        remove_netns(&self.bridge_ns);
        let left = leftovers(&format!("{}-", self.id));
        ensure!(left.is_empty(), "namespaces left behind: {left:?}");
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl crate::delay::InNamespace for Host {
    fn enter_this_thread(&self) -> Result<()> {
        Host::enter_this_thread(self)
    }
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        Host::run(self, program, args)
    }
}

impl Host {
    /// The host's name in the test.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `ip netns` name (`ip netns exec NAME ...` gets a shell there).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether process `pid` runs in this host's network namespace (a process started with
    /// [`Host::command`] gets there a moment after it is spawned).
    pub fn holds(&self, pid: u32) -> bool {
        let host = netns_inode(&format!("/run/netns/{}", self.netns));
        host.is_some() && netns_inode(&format!("/proc/{pid}/ns/net")) == host
    }

    /// The host's address on the switch.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A command that runs on this host (`ip netns exec NETNS PROGRAM`; `ip` execs the program,
    /// so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `program args` on this host; stdout if it exits 0, else an error with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run(&format!("{program} on {}", self.name), &mut cmd)
    }

    fn ip_cmd(&self, what: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        run(&format!("{what} on {}", self.name), &mut ip(&all))
    }

    /// The nft table the faults use: partitions (a set of peers whose packets are dropped on
    /// arrival) and loss.
    fn install_fault_rules(&self) -> Result<()> {
        self.nft(&format!(
            "add table inet {NFT_TABLE}\n\
             add set inet {NFT_TABLE} partitioned {{ type ipv4_addr; }}\n\
             add chain inet {NFT_TABLE} input {{ type filter hook input priority -10; policy accept; }}\n\
             add rule inet {NFT_TABLE} input ip saddr @partitioned drop\n\
             add chain inet {NFT_TABLE} loss {{ type filter hook input priority -5; policy accept; }}\n"
        ))
    }

    fn nft(&self, script: &str) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run nft on {} (is nftables installed?)", self.name))?;
        child
            .stdin
            .take()
            .expect("stdin was configured as piped")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft on {}: {}\nscript:\n{script}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Moves the calling thread into this host's network namespace for good (for threads
    /// that exist to work there).
    pub fn enter_this_thread(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter the network namespace of host {}", self.name))
    }

    /// Runs `make` on a thread that has entered this host's network namespace: sockets made
    /// there belong to the host for good, whichever thread uses them afterwards.
    pub fn within<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let host = self.clone();
        std::thread::spawn(move || -> Result<T> {
            host.enter_this_thread()?;
            make()
        })
        .join()
        .map_err(|_| anyhow!("thread in host {} panicked", self.name))?
    }

    /// A TCP listener on this host (`addr` may use port 0).
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.within(move || TcpListener::bind(addr).with_context(|| format!("listen on {addr}")))
    }

    /// An echo server on this host's address (port 0), on threads of the test; returns where it
    /// listens. It lives as long as the test process (or the host).
    pub fn echo_server(&self) -> Result<SocketAddr> {
        let listener = self.tcp_listen(SocketAddr::from((self.ip, 0)))?;
        // Detached: the test's namespace cannot reach this address to wake the accept loop.
        Ok(crate::echo::Threads::serve(listener)?.detach())
    }

    /// A TCP connection from this host (bounded by `timeout`).
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.within(move || {
            TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))
        })
    }

    /// A UDP socket on this host.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.within(move || UdpSocket::bind(addr).with_context(|| format!("bind {addr}")))
    }

    /// A TCP port that is free on this host's address now. Only this test starts processes on
    /// the host, so it stays free until the test uses it.
    pub fn free_port(&self) -> Result<u16> {
        let addr = SocketAddr::from((self.ip, 0));
        Ok(self.tcp_listen(addr)?.local_addr()?.port())
    }

    /// Delay, loss, ... on what this host sends, e.g. `"delay 25ms loss 1%"` (tc-netem(8));
    /// set it on both ends of a hop to change its round trip. Replaces an earlier setting.
    /// On a kernel without netem, `delay Nms` is emulated with NFQUEUE ([`crate::delay`]) and
    /// `loss P%` with [`Host::set_loss`] (on arrival instead of on sending); other netem
    /// options are refused there with [`NO_NETEM`].
    pub fn netem(&self, spec: &str) -> Result<()> {
        self.clear_emulated();
        let mut cmd = self.command("tc");
        cmd.args(["qdisc", "replace", "dev", "eth0", "root", "netem"])
            .args(spec.split_whitespace());
        match run(&format!("netem {spec:?} on {}", self.name), &mut cmd) {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("qdisc kind is unknown") => self
                .emulate(spec)
                .map_err(|why| e.context(why).context(NO_NETEM)),
            Err(e) => Err(e),
        }
    }

    /// `delay Nms` and `loss P%` without netem.
    fn emulate(&self, spec: &str) -> Result<()> {
        let words: Vec<&str> = spec.split_whitespace().collect();
        let mut delay = None;
        let mut loss = None;
        let mut i = 0;
        while i < words.len() {
            let value = words.get(i + 1).copied().unwrap_or("");
            match words[i] {
                "delay" => {
                    let ms: f64 = value
                        .strip_suffix("ms")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow!("delay {value:?}: give milliseconds, e.g. 25ms"))?;
                    delay = Some(Duration::from_secs_f64(ms / 1000.0));
                }
                "loss" => {
                    let pct: f64 = value
                        .strip_suffix('%')
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow!("loss {value:?}: give a percentage, e.g. 1%"))?;
                    loss = Some(pct);
                }
                other => bail!("netem option {other:?} cannot be emulated without netem"),
            }
            i += 2;
        }
        if let Some(pct) = loss {
            self.set_loss(pct)?;
        }
        if let Some(d) = delay {
            let emulator = crate::delay::Delay::start(std::sync::Arc::new(self.clone()), d)?;
            emulated()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.netns.clone(), emulator);
        }
        Ok(())
    }

    fn clear_emulated(&self) {
        let gone = emulated()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.netns);
        drop(gone);
    }

    /// Drops `percent` of the packets arriving at this host at random (nft `numgen random`,
    /// in the kernel; works also where the kernel has no netem). 0 ends it.
    pub fn set_loss(&self, percent: f64) -> Result<()> {
        ensure!(
            (0.0..=100.0).contains(&percent),
            "loss {percent}% is not a percentage"
        );
        let mut script = format!("flush chain inet {NFT_TABLE} loss\n");
        let per_10k = (percent * 100.0).round() as u32;
        if per_10k >= 10_000 {
            script.push_str(&format!("add rule inet {NFT_TABLE} loss drop\n"));
        } else if per_10k > 0 {
            script.push_str(&format!(
                "add rule inet {NFT_TABLE} loss numgen random mod 10000 < {per_10k} drop\n"
            ));
        }
        self.nft(&script)
    }

    /// Removes a [`Host::netem`] setting (tc's, or the emulated delay and loss).
    pub fn clear_netem(&self) -> Result<()> {
        if emulated()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&self.netns)
        {
            self.clear_emulated();
            return self.set_loss(0.0);
        }
        self.run("tc", &["qdisc", "del", "dev", "eth0", "root"])?;
        Ok(())
    }

    /// The host's link goes down (its routes to the switch go with it).
    pub fn link_down(&self) -> Result<()> {
        self.ip_cmd("link down", &["link", "set", "eth0", "down"])?;
        Ok(())
    }

    /// The host's link comes back (with its address and route).
    pub fn link_up(&self) -> Result<()> {
        self.ip_cmd("link up", &["link", "set", "eth0", "up"])?;
        Ok(())
    }
}
