//! A real load balancer (Debian's `haproxy`) in front of several API servers, as a team runs
//! them: TCP passthrough (TLS ends at the API servers, so client certificates still reach
//! them), each backend health-checked with `GET /readyz` over TLS, so a server that lost its
//! store or died is taken out of rotation. The test reads backend states from haproxy's stats
//! socket instead of guessing how long checks take.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{bail, Context, Result};

use crate::testbed::Host;
use crate::Child;

/// haproxy's health-check interval: short, so a dead backend leaves rotation within ~1 s.
const CHECK_INTERVAL_MS: u32 = 300;

/// How backends are health-checked.
enum Check {
    /// `GET /readyz` over TLS must answer 200 (API servers).
    Readyz,
    /// A TCP connect must succeed.
    Connect,
}

/// One haproxy process; killed on drop.
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    stats: PathBuf,
}

impl Haproxy {
    /// haproxy on `host`, on a free port of its address, balancing (least connections) over
    /// `backends` (`IP:PORT` of HTTPS API servers), each checked with `GET /readyz`.
    pub fn start_on(host: &Host, work_dir: &Path, backends: &[SocketAddr]) -> Result<Haproxy> {
        Haproxy::start(host, work_dir, "haproxy", backends, Check::Readyz)
    }

    /// haproxy as a plain TCP balancer (backends checked by connecting), named `name` (its
    /// files are `NAME.cfg`, `NAME.sock`): the same hop in front of something that is not an
    /// API server, for like-for-like benchmarks.
    pub fn start_tcp_on(
        host: &Host,
        work_dir: &Path,
        name: &str,
        backends: &[SocketAddr],
    ) -> Result<Haproxy> {
        Haproxy::start(host, work_dir, name, backends, Check::Connect)
    }

    fn start(
        host: &Host,
        work_dir: &Path,
        name: &str,
        backends: &[SocketAddr],
        check: Check,
    ) -> Result<Haproxy> {
        let addr = SocketAddr::from((host.ip(), host.free_port()?));
        let stats = work_dir.join(format!("{name}.sock"));
        let check = match check {
            Check::Readyz => {
                "  option httpchk GET /readyz\n  http-check expect status 200\n\
                 \x20 default-server check check-ssl verify none"
            }
            Check::Connect => "  default-server check",
        };
        let mut cfg = format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  retries 3\n  option redispatch\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
             frontend apiservers\n  bind {addr}\n  default_backend apiservers\n\
             backend apiservers\n  balance leastconn\n{check} inter {CHECK_INTERVAL_MS} fall 2 rise 1\n",
            stats.display()
        );
        for (i, backend) in backends.iter().enumerate() {
            writeln!(cfg, "  server api{} {backend}", i + 1)?;
        }
        let cfg_path = crate::write_file(work_dir, format!("{name}.cfg"), &cfg)?;
        let mut cmd = host.command("haproxy");
        // -db: foreground, logs to stderr.
        cmd.arg("-db").arg("-f").arg(&cfg_path);
        let child = Child::spawn(name, cmd, work_dir)
            .context("start haproxy (is Debian's haproxy installed?)")?
            .stop_with(nix::sys::signal::Signal::SIGTERM);
        let haproxy = Haproxy { child, addr, stats };
        haproxy.wait_for(Duration::from_secs(30), |_| true)?;
        Ok(haproxy)
    }

    /// The address clients use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://IP:PORT` of the balancer.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Each backend's name (`api1`, ...) and status (`UP`, `DOWN`, ...), from the stats socket.
    pub fn backend_states(&self) -> Result<Vec<(String, String)>> {
        let mut sock = UnixStream::connect(&self.stats)
            .with_context(|| format!("connect haproxy's stats socket {}", self.stats.display()))?;
        sock.write_all(b"show stat\n")?;
        let mut text = String::new();
        sock.read_to_string(&mut text)?;
        // CSV: pxname,svname,...; status is column 18 (index 17).
        Ok(text
            .lines()
            .filter(|l| l.starts_with("apiservers,api"))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                Some((cols.get(1)?.to_string(), cols.get(17)?.to_string()))
            })
            .collect())
    }

    /// Waits until `ready(states)` holds (the stats socket answering is the first condition).
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&[(String, String)]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("stats socket not answering");
        while Instant::now() < deadline {
            match self.backend_states() {
                Ok(states) if ready(&states) => return Ok(()),
                Ok(states) => last = format!("{states:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            // Health checks run every CHECK_INTERVAL_MS; poll at that pace.
            std::thread::sleep(Duration::from_millis(u64::from(CHECK_INTERVAL_MS)));
        }
        bail!(
            "haproxy backends did not reach the wanted state within {timeout:?}: {last}\n{}",
            self.child.report()
        )
    }

    /// Waits until backend `name` (`api1`, ...) has `status` (`UP`, `DOWN`).
    pub fn wait_backend(&self, name: &str, status: &str, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, |states| {
            states
                .iter()
                .any(|(n, s)| n == name && s.starts_with(status))
        })
    }
}
