#!/usr/bin/env python3
"""porthole's benchmark suite: every path of issue 7 side by side, interleaved rep by rep.

Called by bench/run.sh (which builds the tools, raises limits and traps cleanup); see
bench/README.md. Writes OUT/results.tsv (rep, path, metric, value), OUT/meta.json and one log
per process; bench/summarize.py turns them into BENCHMARKS.md.

Paths (issue 7): phys (1), tls-relay (2), tls-one-hop (2b, issue 15), socat (3),
ssh-default / ssh-aes128 (4), kubectl-ws / kubectl-spdy (5), porthole-ws / porthole-spdy (6).
Workloads and methods: docs/PERF_BASELINES.md §5.
"""

import argparse
import json
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ECHO_PORT = 7001  # inside the pod's network namespace
IPERF_PORT = 5201
POD = "pbench"
# A stalled test (a forwarder that stops moving bytes) ends after 10 s instead of 120 s and
# leaves the server free for the next test.
IPERF_SERVER_OPTS = ["--rcv-timeout", "10000"]
NPROC = os.cpu_count() or 1
ALL_CPUS = f"0-{NPROC - 1}"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# processes


class Proc:
    """A long-running process in its own process group; stdout is drained into its log (kubectl
    prints a line per connection and must never block) and matched against `ready`."""

    def __init__(self, suite, name, argv, env=None, stop_signal=signal.SIGTERM, stop_wait=5.0):
        self.name, self.argv = name, argv
        self.stop_signal, self.stop_wait = stop_signal, stop_wait
        self.logf = open(os.path.join(suite.out, f"{name}.log"), "ab", buffering=0)
        self.logf.write(f"$ {' '.join(argv)}\n".encode())
        self.lines = queue.Queue()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.logf,
                                  stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.pid = self.p.pid
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        suite.procs.append(self)

    def _drain(self):
        for raw in self.p.stdout:
            try:
                self.logf.write(raw)
            except ValueError:  # the log was closed by stop()
                pass
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_lines(self, patterns, timeout):
        """Wait until each regex in `patterns` matched a stdout line; return the match objects."""
        found = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(patterns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no line matching {patterns} within {timeout} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited ({self.p.wait()}) before it was ready")
            for i, pat in enumerate(patterns):
                m = re.search(pat, line)
                if m and i not in found:
                    found[i] = m
        return [found[i] for i in range(len(patterns))]

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            tree = descendants(self.pid)
            try:
                os.killpg(self.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=self.stop_wait)
            except subprocess.TimeoutExpired:
                pass
            for pid in [self.pid] + tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait()
        self.drain.join(timeout=2)
        self.logf.close()


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid):
    kids, out, todo = children_map(), [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def tree(pid, exe=None):
    """pid and its descendants; with `exe`, only those running that executable."""
    pids = [pid] + descendants(pid)
    if exe:
        pids = [p for p in pids if _exe(p) == exe]
    return pids


def _exe(pid):
    try:
        return os.path.realpath(f"/proc/{pid}/exe")
    except OSError:
        return None


def rollup(pid):
    """(Rss, Pss) in KiB from /proc/PID/smaps_rollup; (0, 0) if it has gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def cpu_ticks(pid):
    """utime+stime+cutime+cstime of pid (clock ticks); 0 if it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return 0
    fields = st[st.rindex(")") + 2:].split()
    return sum(int(x) for x in fields[11:15])


def kernel_kib():
    vals = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            vals[k] = int(v.split()[0])
    return vals["Slab"] + vals["KernelStack"] + vals["PageTables"]


def listening(pid, port):
    """Is something listening on 127.0.0.1:port in the network namespace of pid?"""
    want = f"0100007F:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            return any(l.split()[1] == want and l.split()[3] == "0A" for l in list(f)[1:])
    except OSError:
        return False


def run_json(argv, timeout, env=None):
    """Run a measuring command that prints one JSON object; return it (last JSON line)."""
    r = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    out = r.stdout.decode(errors="replace").strip().splitlines()
    for line in reversed(out):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{argv[0]} exit {r.returncode}: {r.stderr.decode(errors='replace')[-400:]}")


# ---------------------------------------------------------------------------------------------
# paths


class Path:
    """One way to reach the pod's echo and iperf3 servers.

    echo/iperf: host addresses (host:port) the clients use; prefix: argv prefix for clients
    (nsenter for the physical path); roles: name -> function returning the pids of that role
    (memory and CPU are summed over them); pin: extra pids to pin for the pinned RTT."""

    def __init__(self, name, echo, iperf, prefix=(), roles=None, pin=(), client=None):
        self.name, self.echo, self.iperf = name, echo, iperf
        self.prefix = list(prefix)
        self.roles = roles or {}
        self.pin = list(pin)
        self.client = client  # role whose CPU per GB the issue compares (kubectl vs porthole)
        self.mem_max = None  # cap on idle connections (socat: a process pair per connection)
        self.iperf_server = None  # (pid, port) of the iperf3 server behind this path


class Suite:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        self.procs = []
        self.rows = []
        self.failures = []
        self.notes = []
        self.netns_name = None
        self.bench = os.path.abspath(a.bench)
        self.porthole = os.path.abspath(a.porthole)
        self.paths = []
        self.results = open(os.path.join(self.out, "results.tsv"), "a")
        self.env = dict(os.environ)
        self.env["KUBECACHEDIR"] = os.path.join(self.out, "kube-cache")

    # -- bookkeeping --------------------------------------------------------------------------

    def record(self, rep, path, metric, value):
        if value is None or (isinstance(value, float) and value != value):
            return
        self.rows.append((rep, path, metric, value))
        self.results.write(f"{rep}\t{path}\t{metric}\t{value:.6g}\n")
        self.results.flush()

    def fail(self, what, err):
        msg = f"{what}: {err}"
        log(f"FAILED {msg}")
        self.failures.append(msg)

    def cleanup(self):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as e:  # keep cleaning
                log(f"stop {p.name}: {e}")
        self.procs = []
        if self.netns_name:
            subprocess.run(["ip", "netns", "del", self.netns_name], stderr=subprocess.DEVNULL)
            self.netns_name = None

    # -- the pod -----------------------------------------------------------------------------

    def pod_yaml(self, tag):
        return f"""apiVersion: v1
kind: Pod
metadata: {{name: {POD}, labels: {{app: {POD}}}}}
spec:
  containers:
  - name: echo
    image: host
    command: ["{self.bench}", "echo", "--listen", "127.0.0.1:{ECHO_PORT}"]
    env: [{{name: PBENCH_TAG, value: "{tag}"}}]
    ports: [{{containerPort: {ECHO_PORT}, name: echo}}]
  - name: iperf
    image: host
    command: ["{shutil.which('iperf3')}", "-s", "-B", "127.0.0.1", "-p", "{IPERF_PORT}", "--rcv-timeout", "10000"]
    env: [{{name: PBENCH_TAG, value: "{tag}"}}]
    ports: [{{containerPort: {IPERF_PORT}, name: iperf}}]
"""

    def find_tagged(self, tag, exe, port):
        """The pod process running `exe`: by the env tag of our pod spec, else (a runtime that
        drops env) by its command line naming `port` in a network namespace not the host's."""
        host_ns = os.stat("/proc/self/ns/net").st_ino
        fallback = None
        for d in os.listdir("/proc"):
            if not d.isdigit() or _exe(int(d)) != exe:
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if f"PBENCH_TAG={tag}".encode() in f.read().split(b"\0"):
                        return int(d)
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
                if (str(port) in argv or f"127.0.0.1:{port}" in argv) \
                        and os.stat(f"/proc/{d}/ns/net").st_ino != host_ns:
                    fallback = int(d)
            except OSError:
                continue
        return fallback

    def start_porthole(self):
        """porthole up with the bench pod; returns True when its pod serves both ports."""
        tag = f"pbench-{os.getpid()}"
        data = os.path.join(self.out, "porthole-data")
        pod = os.path.join(self.out, "pod.yaml")
        with open(pod, "w") as f:
            f.write(self.pod_yaml(tag))
        self.up = Proc(self, "porthole-up", [self.porthole, "up", "-f", pod, "--data-dir", data,
                                             "--listen", "127.0.0.1:0"] + self.a.up_arg,
                       env=self.env, stop_signal=signal.SIGINT, stop_wait=30)
        (m,) = self.up.wait_lines([r"cluster ready, kubeconfig at (\S+)"], timeout=180)
        self.kubeconfig = m.group(1)
        self.env["KUBECONFIG"] = self.kubeconfig
        deadline = time.monotonic() + 90
        phase = ""
        while time.monotonic() < deadline:
            r = subprocess.run(["kubectl", "get", "pod", POD, "-o", "jsonpath={.status.phase}"],
                               capture_output=True, env=self.env, timeout=20)
            phase = r.stdout.decode()
            if phase == "Running":
                break
            time.sleep(0.5)
        if phase != "Running":
            raise RuntimeError(f"pod {POD} is {phase!r}, not Running, after 90 s")
        echo_pid = iperf_pid = None
        while time.monotonic() < deadline:
            echo_pid = self.find_tagged(tag, os.path.realpath(self.bench), ECHO_PORT)
            iperf_pid = self.find_tagged(tag, os.path.realpath(shutil.which("iperf3")),
                                         IPERF_PORT)
            if echo_pid and iperf_pid and listening(echo_pid, ECHO_PORT) \
                    and listening(iperf_pid, IPERF_PORT):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("the pod's echo/iperf3 servers never listened")
        if os.stat(f"/proc/{echo_pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise RuntimeError("the pod runs in the host network namespace")
        self.pod_pids = [echo_pid, iperf_pid]
        return f"/proc/{echo_pid}/ns/net"

    def start_own_netns(self):
        name = f"pbench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns_name = name
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        nsfile = f"/var/run/netns/{name}"
        e = Proc(self, "pod-echo", ["nsenter", f"--net={nsfile}", self.bench, "echo", "--listen",
                                    f"127.0.0.1:{ECHO_PORT}"])
        e.wait_lines([r"listening on"], 10)
        i = Proc(self, "pod-iperf3", ["nsenter", f"--net={nsfile}", "iperf3", "-s", "-B",
                                      "127.0.0.1", "-p", str(IPERF_PORT)] + IPERF_SERVER_OPTS)
        for _ in range(100):
            if listening(i.pid, IPERF_PORT):
                break
            time.sleep(0.05)
        self.pod_pids = [e.pid, i.pid]
        return nsfile

    # -- path set-up -------------------------------------------------------------------------

    def setup(self):
        a = self.a
        self.nsfile = None
        self.porthole_ok = False
        if "porthole" in a.modes or "kubectl" in a.modes:
            try:
                self.nsfile = self.start_porthole()
                self.porthole_ok = True
                self.notes.append("pod netns: porthole's own (porthole up), "
                                  "entered via /proc/PID/ns/net of the pod's echo server")
            except Exception as e:
                self.fail("porthole up", e)
                if self.a.smoke_strict:
                    raise
                self.cleanup()
        if not self.nsfile:
            self.nsfile = self.start_own_netns()
            self.notes.append(f"pod netns: own ({self.netns_name}); porthole paths skipped")
        ns = self.nsfile
        pod_echo, pod_iperf = f"127.0.0.1:{ECHO_PORT}", f"127.0.0.1:{IPERF_PORT}"
        pod_pids = self.pod_pids
        self.pod_iperf_server = (pod_pids[1], IPERF_PORT)
        want = set(a.paths)

        def try_path(name, fn):
            if name not in want:
                return
            try:
                path = fn()
                path.iperf_server = (self.host_iperf_server if name.startswith("ssh")
                                     else self.pod_iperf_server)
                self.paths.append(path)
                log(f"path {name} ready")
            except Exception as e:
                self.fail(f"set up {name}", e)
                if self.a.smoke_strict:
                    raise

        # 1. physical limit
        try_path("phys", lambda: Path("phys", pod_echo, pod_iperf,
                                      prefix=["nsenter", f"--net={ns}"], pin=pod_pids))

        def relay_certs():
            certs = os.path.join(self.out, "certs")
            if not os.path.exists(os.path.join(certs, "ca.pem")):
                subprocess.run([self.bench, "gencerts", "--dir", certs], check=True)
            return (os.path.join(certs, f) for f in ("leaf.pem", "leaf.key", "ca.pem"))

        def node_relay(name):
            """The TLS relay standing for the node: TLS in, plain TCP into the pod's netns."""
            c, k, _ = relay_certs()
            node = Proc(self, name, [self.bench, "relay", "--listen", "127.0.0.1:0",
                                     "--connect", pod_echo, "--listen", "127.0.0.1:0",
                                     "--connect", pod_iperf, "--tls-cert", c,
                                     "--tls-key", k, "--netns", ns])
            n1, n2 = node.wait_lines([r"listening on (\S+) -> .*:%d" % ECHO_PORT,
                                      r"listening on (\S+) -> .*:%d" % IPERF_PORT], 10)
            return node, n1, n2

        # 2. the same chain with no protocol: 3 TLS relays (client, "apiserver", "node")
        def tls_relay():
            c, k, ca = relay_certs()
            node, n1, n2 = node_relay("relay-node")
            api = Proc(self, "relay-apiserver", [self.bench, "relay", "--listen", "127.0.0.1:0",
                                                 "--connect", n1.group(1), "--listen",
                                                 "127.0.0.1:0", "--connect", n2.group(1),
                                                 "--tls-cert", c, "--tls-key", k,
                                                 "--tls-ca", ca])
            a1, a2 = api.wait_lines([r"listening on (\S+) -> %s" % re.escape(n1.group(1)),
                                     r"listening on (\S+) -> %s" % re.escape(n2.group(1))], 10)
            cli = Proc(self, "relay-client", [self.bench, "relay", "--listen", "127.0.0.1:0",
                                              "--connect", a1.group(1), "--listen",
                                              "127.0.0.1:0", "--connect", a2.group(1),
                                              "--tls-ca", ca])
            c1, c2 = cli.wait_lines([r"listening on (\S+) -> %s" % re.escape(a1.group(1)),
                                     r"listening on (\S+) -> %s" % re.escape(a2.group(1))], 10)
            return Path("tls-relay", c1.group(1), c2.group(1),
                        roles={"client relay": lambda: [cli.pid],
                               "apiserver relay": lambda: [api.pid],
                               "node relay": lambda: [node.pid]},
                        pin=[cli.pid, api.pid, node.pid] + pod_pids)
        try_path("tls-relay", tls_relay)

        # 2b. one TLS hop and no protocol (a client relay → the node relay): the ceiling of
        # `porthole up`, whose API server reaches the node in process, so one TLS hop in all.
        def tls_one_hop():
            _, _, ca = relay_certs()
            node, n1, n2 = node_relay("hop-node")
            cli = Proc(self, "hop-client", [self.bench, "relay", "--listen", "127.0.0.1:0",
                                            "--connect", n1.group(1), "--listen",
                                            "127.0.0.1:0", "--connect", n2.group(1),
                                            "--tls-ca", ca])
            c1, c2 = cli.wait_lines([r"listening on (\S+) -> %s" % re.escape(n1.group(1)),
                                     r"listening on (\S+) -> %s" % re.escape(n2.group(1))], 10)
            return Path("tls-one-hop", c1.group(1), c2.group(1),
                        roles={"client relay": lambda: [cli.pid],
                               "node relay": lambda: [node.pid]},
                        pin=[cli.pid, node.pid] + pod_pids)
        try_path("tls-one-hop", tls_one_hop)

        # 3. the seed's reference: socat fork + nsenter + socat per connection
        def socat():
            pe, pi = free_port(), free_port()
            procs = []
            for port, target in ((pe, ECHO_PORT), (pi, IPERF_PORT)):
                procs.append(Proc(self, f"socat-{target}", [
                    "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
                    f"EXEC:nsenter --net={ns} socat STDIO TCP\\:127.0.0.1\\:{target}"]))
            wait_port(pe)
            wait_port(pi)
            path = Path("socat", f"127.0.0.1:{pe}", f"127.0.0.1:{pi}",
                        roles={"socat (all processes)":
                               lambda: [x for p in procs for x in tree(p.pid)]},
                        pin=[p.pid for p in procs] + pod_pids)
            path.mem_max = 1000
            return path
        try_path("socat", socat)

        # 4. ssh -L through our own sshd (one per client), host-loopback servers
        if want & {"ssh-default", "ssh-aes128"}:
            host_echo = Proc(self, "host-echo", [self.bench, "echo", "--listen", "127.0.0.1:0"])
            (m,) = host_echo.wait_lines([r"listening on (\S+)"], 10)
            self.host_echo = m.group(1)
            hp = free_port()
            host_iperf = Proc(self, "host-iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p",
                                                    str(hp)] + IPERF_SERVER_OPTS)
            wait_port(hp)
            self.host_iperf = f"127.0.0.1:{hp}"
            self.host_pids = [host_echo.pid, host_iperf.pid]
            self.host_iperf_server = (host_iperf.pid, hp)
            self.ssh_keys()
        for name, cipher in (("ssh-default", None), ("ssh-aes128", "aes128-gcm@openssh.com")):
            try_path(name, lambda name=name, cipher=cipher: self.ssh_path(name, cipher))

        # 5./6. kubectl and porthole port-forward against porthole
        if self.porthole_ok:
            kubectl_env = dict(self.env, KUBECTL_PORT_FORWARD_WEBSOCKETS="false")
            for name, argv, env in (
                    ("kubectl-ws", ["kubectl", "port-forward", f"pod/{POD}"], self.env),
                    ("kubectl-spdy", ["kubectl", "port-forward", f"pod/{POD}"], kubectl_env),
                    ("porthole-ws", [self.porthole, "port-forward", "--transport", "websocket",
                                     POD], self.env),
                    ("porthole-spdy", [self.porthole, "port-forward", "--transport", "spdy",
                                       POD], self.env)):
                try_path(name, lambda name=name, argv=argv, env=env:
                         self.forward_path(name, argv, env))
        else:
            for name in ("kubectl-ws", "kubectl-spdy", "porthole-ws", "porthole-spdy"):
                if name in want:
                    self.fail(f"set up {name}", "porthole up is not running")

    def ssh_keys(self):
        d = os.path.join(self.out, "ssh")
        os.makedirs(d, exist_ok=True)
        for k in ("hostkey", "userkey"):
            if not os.path.exists(os.path.join(d, k)):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                                os.path.join(d, k)], check=True)
        shutil.copy(os.path.join(d, "userkey.pub"), os.path.join(d, "authorized_keys"))
        self.ssh_dir = d

    def ssh_path(self, name, cipher):
        d = self.ssh_dir
        port = free_port()
        conf = os.path.join(d, f"sshd_config-{name}")
        with open(conf, "w") as f:
            f.write(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/hostkey
PidFile {d}/sshd-{name}.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
MaxStartups 200:30:400
""")
        # A private mount namespace gives sshd its /run/sshd without touching the real /run.
        sshd = Proc(self, f"sshd-{name}", [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && "
            f"exec /usr/sbin/sshd -D -e -f {conf}"])
        wait_port(port)
        le, li = free_port(), free_port()
        argv = ["ssh", "-N", "-F", "/dev/null", "-i", f"{d}/userkey", "-o",
                "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
                "-p", str(port)]
        if cipher:
            argv += ["-c", cipher]
        argv += ["-L", f"127.0.0.1:{le}:{self.host_echo}", "-L", f"127.0.0.1:{li}:{self.host_iperf}",
                 "root@127.0.0.1"]
        ssh = Proc(self, f"ssh-{name}", argv)
        wait_port(le, proc=ssh)
        wait_port(li, proc=ssh)
        return Path(name, f"127.0.0.1:{le}", f"127.0.0.1:{li}",
                    roles={"ssh client": lambda: [ssh.pid],
                           "sshd (listener + session)": lambda: tree(sshd.pid)},
                    pin=[ssh.pid, sshd.pid] + self.host_pids, client="ssh client")

    def forward_path(self, name, argv, env):
        fwd = Proc(self, name, argv + [f":{ECHO_PORT}", f":{IPERF_PORT}"], env=env,
                   stop_signal=signal.SIGINT)
        m1, m2 = fwd.wait_lines([r"^Forwarding from 127\.0\.0\.1:(\d+) -> %d$" % ECHO_PORT,
                                 r"^Forwarding from 127\.0\.0\.1:(\d+) -> %d$" % IPERF_PORT], 60)
        porthole_exe = os.path.realpath(self.porthole)
        up = self.up
        client = "kubectl" if name.startswith("kubectl") else "porthole port-forward"
        return Path(name, f"127.0.0.1:{m1.group(1)}", f"127.0.0.1:{m2.group(1)}",
                    roles={client: lambda: [fwd.pid],
                           "porthole up (apiserver + node)": lambda: tree(up.pid, porthole_exe)},
                    pin=[fwd.pid, up.pid] + self.pod_pids, client=client)

    # -- measurements ------------------------------------------------------------------------

    def pin(self, path, cpus):
        pids = set()
        for p in path.pin:
            pids.update(tree(p))
        for p in pids:
            subprocess.run(["taskset", "-a", "-pc", cpus, str(p)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def role_cpu(self, path):
        return {role: sum(cpu_ticks(p) for p in f()) for role, f in path.roles.items()}

    def iperf(self, path, streams, secs, omit, reverse=False):
        host, port = path.iperf.rsplit(":", 1)
        argv = path.prefix + ["iperf3", "-c", host, "-p", port, "-t", str(secs), "-O", str(omit),
                              "-J", "--connect-timeout", "10000"]
        if streams > 1:
            argv += ["-P", str(streams)]
        if reverse:
            argv += ["-R"]
        # iperf3 closes its listener while it runs a test and reopens it afterwards: a test that
        # starts right after the previous one would be refused by the server.
        pid, sport = path.iperf_server
        for _ in range(100):
            if listening(pid, sport):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        cpu0 = self.role_cpu(path)
        r = subprocess.run(argv, capture_output=True, timeout=secs + omit + 30)
        cpu1 = self.role_cpu(path)
        j = json.loads(r.stdout or b"{}")
        if "error" in j or "end" not in j:
            raise RuntimeError(f"iperf3: {j.get('error', r.stderr.decode()[-300:])}")
        received = j["end"]["sum_received"]
        mbps = received["bits_per_second"] / 8e6
        moved = sum(iv["sum"]["bytes"] for iv in j["intervals"])  # including the omitted second
        tck = os.sysconf("SC_CLK_TCK")
        cpu_per_gb = {role: (cpu1[role] - cpu0[role]) / tck / (moved / 1e9) for role in cpu0}
        return mbps, cpu_per_gb

    def measure(self, rep, path):
        a = self.a
        pn = path.name
        addr = path.echo

        def step(what, fn):
            try:
                fn()
            except Exception as e:
                self.fail(f"rep {rep} {pn} {what}", e)

        def thr(streams, reverse=False):
            mbps, cpu = self.iperf(path, streams, a.iperf_secs, a.iperf_omit, reverse)
            d = "r" if reverse else ""
            self.record(rep, pn, f"thr{streams}{d}_MBps", mbps)
            if streams == 1:
                for role, v in cpu.items():
                    self.record(rep, pn, f"cpu{d}_s_per_GB:{role}", v)
        step("throughput 1", lambda: thr(1))
        step("throughput 8", lambda: thr(8))
        # Downloads (pod → client, iperf3 -R): the other direction through every hop.
        step("throughput 1 reverse", lambda: thr(1, reverse=True))

        rtt = [self.bench, "rtt", "--connect", addr, "--size", "64", "--count", str(a.rtt_count),
               "--warmup", str(a.rtt_warmup), "--secs", str(a.rtt_secs)]

        def rtt_pinned():
            self.pin(path, "0")
            try:
                j = run_json(["taskset", "-c", "0"] + path.prefix + rtt, a.rtt_secs + 60)
            finally:
                self.pin(path, ALL_CPUS)
            self.record(rep, pn, "rtt_pin_p50_us", j["p50_us"])
            self.record(rep, pn, "rtt_pin_p99_us", j["p99_us"])
        step("rtt pinned", rtt_pinned)

        def rtt_free():
            j = run_json(path.prefix + rtt, a.rtt_secs + 60)
            self.record(rep, pn, "rtt_p50_us", j["p50_us"])
            self.record(rep, pn, "rtt_p99_us", j["p99_us"])
        step("rtt unpinned", rtt_free)

        def rtt_loaded():
            # 64 B ping-pong while 8 bulk streams share the same forwarder (head-of-line
            # blocking and fairness of a multiplexed tunnel; PERF_BASELINES §5 "beyond").
            ihost, iport = path.iperf.rsplit(":", 1)
            bulk = subprocess.Popen(path.prefix + ["iperf3", "-c", ihost, "-p", iport, "-P", "8",
                                                   "-t", str(a.load_secs + 2)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.0)
                j = run_json(path.prefix + [self.bench, "rtt", "--connect", addr, "--count",
                                            "1000000", "--warmup", "100", "--secs",
                                            str(a.load_secs)], a.load_secs + 60)
            finally:
                try:
                    bulk.wait(timeout=a.load_secs + 60)
                except subprocess.TimeoutExpired:
                    bulk.kill()
                    bulk.wait()
            self.record(rep, pn, "rtt_load_p50_us", j["p50_us"])
            self.record(rep, pn, "rtt_load_p99_us", j["p99_us"])
        if a.load_secs > 0:
            step("rtt under load", rtt_loaded)

        def connrate(conc):
            j = run_json(path.prefix + [self.bench, "connrate", "--connect", addr, "--conc",
                                        str(conc), "--secs", str(a.conn_secs), "--max",
                                        str(a.conn_max)], a.conn_secs + 120)
            self.record(rep, pn, f"conn{conc}_per_s", j["conn_per_s"])
            self.record(rep, pn, f"conn{conc}_p50_us", j["p50_us"])
            if j["errors"]:
                self.record(rep, pn, f"conn{conc}_errors", j["errors"])
                self.notes.append(f"rep {rep} {pn} connrate {conc}: {j['errors']} errors, "
                                  f"first: {j['first_error']}")
        step("connrate 1", lambda: connrate(1))
        step("connrate 8", lambda: connrate(8))

    def memory(self, rep, path, n):
        """Idle connections: PSS/RSS per role with 0 and n connections (PERF_BASELINES §2.4)."""
        if not path.roles:
            return
        if path.mem_max and n > path.mem_max:
            return
        pn = path.name
        time.sleep(1.0)  # let connections of the previous step finish closing

        def snap():
            out = {}
            for role, f in path.roles.items():
                pids = f()
                rs = [rollup(p) for p in pids]
                out[role] = (sum(r for r, _ in rs), sum(p for _, p in rs), len(pids))
            return out
        base, k0 = snap(), kernel_kib()
        p = subprocess.Popen(path.prefix + [self.bench, "idle", "--connect", path.echo, "--n",
                                            str(n), "--hold", "600"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            opened = json.loads(p.stdout.readline() or b"{}")
            if "open" not in opened:
                raise RuntimeError(f"idle: {p.stderr.read().decode()[-300:]}")
            time.sleep(2.0)
            held, k1 = snap(), kernel_kib()
            p.stdin.write(b"check\n")
            p.stdin.flush()
            after = json.loads(p.stdout.readline() or b"{}")
        finally:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        ok = opened["open"]
        self.record(rep, pn, f"mem_open@{n}", ok)
        self.record(rep, pn, f"mem_still_ok@{n}", after.get("still_ok", 0))
        if "checked" in after:
            self.record(rep, pn, f"mem_checked@{n}", after["checked"])
        self.record(rep, pn, f"mem_open_secs@{n}", opened["open_secs"])
        if opened["errors"]:
            self.notes.append(f"rep {rep} {pn} idle {n}: {opened['errors']} failed to open, "
                              f"first: {opened['first_error']}")
        if ok == 0:
            raise RuntimeError("no connection opened")
        self.record(rep, pn, f"mem_kernel_kib_per_conn@{n}", (k1 - k0) / ok)
        for role in base:
            r0, p0, c0 = base[role]
            r1, p1, c1 = held[role]
            self.record(rep, pn, f"mem_pss_kib_per_conn@{n}:{role}", (p1 - p0) / ok)
            self.record(rep, pn, f"mem_rss_kib_per_conn@{n}:{role}", (r1 - r0) / ok)
            self.record(rep, pn, f"mem_pss_base_kib:{role}", p0)
            self.record(rep, pn, f"mem_rss_base_kib:{role}", r0)
            self.record(rep, pn, f"mem_procs@{n}:{role}", c1)

    def ttfb(self, rep, name, argv, env):
        j = run_json([self.bench, "ttfb", "--remote-port", str(ECHO_PORT), "--timeout", "60",
                      "--"] + argv + [f":{ECHO_PORT}"], 120, env=env)
        self.record(rep, name, "ttfb_listen_ms", j["listen_ms"])
        self.record(rep, name, "ttfb_first_byte_ms", j["first_byte_ms"])

    def run(self):
        a = self.a
        self.setup()
        log(f"paths: {', '.join(p.name for p in self.paths)}")
        for rep in range(1, a.reps + 1):
            for path in self.paths:
                log(f"rep {rep}/{a.reps}: {path.name}")
                self.measure(rep, path)
            if self.porthole_ok:
                spdy_env = dict(self.env, KUBECTL_PORT_FORWARD_WEBSOCKETS="false")
                for name, argv, env in (
                        ("kubectl-ws", ["kubectl", "port-forward", f"pod/{POD}"], self.env),
                        ("kubectl-spdy", ["kubectl", "port-forward", f"pod/{POD}"], spdy_env),
                        ("porthole-ws", [self.porthole, "port-forward", "--transport",
                                         "websocket", POD], self.env),
                        ("porthole-spdy", [self.porthole, "port-forward", "--transport", "spdy",
                                           POD], self.env)):
                    if name in a.paths:
                        try:
                            self.ttfb(rep, name, argv, env)
                        except Exception as e:
                            self.fail(f"rep {rep} {name} ttfb", e)
            if rep <= a.mem_reps:
                for n in a.mem_n:
                    for path in self.paths:
                        if n > a.mem_small and path.name not in a.mem_big_paths:
                            continue
                        log(f"rep {rep}: {path.name} memory with {n} idle connections")
                        try:
                            self.memory(rep, path, n)
                        except Exception as e:
                            self.fail(f"rep {rep} {path.name} memory {n}", e)
            for path in self.paths:
                for role, f in path.roles.items():
                    if not f():
                        self.fail(f"after rep {rep}", f"{path.name}: {role} is gone")


def wait_port(port, timeout=20, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.p.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def machine_facts():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, timeout=20).stdout \
                .decode(errors="replace").strip()
        except Exception:
            return ""
    facts = {
        "nproc": str(NPROC),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-").strip(),
        "cpu_mhz": sh("grep -m1 'cpu MHz' /proc/cpuinfo | cut -d: -f2-").strip(),
        "kernel": sh("uname -srvm"),
        "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
        "memory": sh("grep MemTotal /proc/meminfo | awk '{printf \"%.1f GiB\", $2/1048576}'"),
        "tcp": sh("sysctl -n net.ipv4.tcp_congestion_control"),
        "iperf3": sh("iperf3 --version | head -1"),
        "socat": sh("socat -V | grep 'socat version' | head -1"),
        "ssh": sh("ssh -V 2>&1"),
        "kubectl": sh("kubectl version --client 2>/dev/null | head -1"),
        "rustc": sh("rustc --version"),
        "load_at_start": sh("cat /proc/loadavg"),
    }
    return facts


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench", required=True, help="porthole-bench binary")
    ap.add_argument("--porthole", required=True, help="porthole binary")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--paths", default="phys,tls-relay,tls-one-hop,socat,ssh-default,ssh-aes128,kubectl-ws,"
                                       "kubectl-spdy,porthole-ws,porthole-spdy")
    ap.add_argument("--mem", default=None, help="idle connection counts, e.g. 1000,10000")
    ap.add_argument("--mem-reps", type=int, default=1)
    ap.add_argument("--command", default="", help="the command line, for the report")
    ap.add_argument("--up-arg", action="append", default=[],
                    help="extra argument for `porthole up` (repeatable), e.g. --node-over-tls")
    a = ap.parse_args()
    a.paths = a.paths.split(",")
    a.modes = {"porthole" if p.startswith("porthole") else "kubectl" if p.startswith("kubectl")
               else p for p in a.paths}
    a.smoke_strict = a.smoke
    if a.smoke:
        a.reps = a.reps or 1
        a.iperf_secs, a.iperf_omit = 1, 0
        a.rtt_count, a.rtt_warmup, a.rtt_secs = 300, 30, 2
        a.load_secs = 0
        a.conn_secs, a.conn_max = 0.3, 100
        a.mem_n = [int(x) for x in (a.mem or "20").split(",")]
        a.mem_small = min(a.mem_n)
    else:
        a.reps = a.reps or 5
        a.iperf_secs, a.iperf_omit = 4, 1
        a.rtt_count, a.rtt_warmup, a.rtt_secs = 20000, 1000, 10
        a.load_secs = 4
        a.conn_secs, a.conn_max = 4, 12000
        a.mem_n = [int(x) for x in (a.mem or "1000,10000").split(",")]
        a.mem_small = min(a.mem_n)
    a.mem_big_paths = {"tls-relay", "ssh-default", "kubectl-ws", "porthole-ws", "porthole-spdy"}
    for k in ("PBENCH_IPERF_SECS", "PBENCH_RTT_COUNT", "PBENCH_CONN_SECS", "PBENCH_LOAD_SECS"):
        if k in os.environ:
            v = float(os.environ[k])
            setattr(a, {"PBENCH_IPERF_SECS": "iperf_secs", "PBENCH_RTT_COUNT": "rtt_count",
                        "PBENCH_CONN_SECS": "conn_secs", "PBENCH_LOAD_SECS": "load_secs"}[k],
                    int(v) if k != "PBENCH_CONN_SECS" else v)
    os.makedirs(a.out, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 200_000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    suite = Suite(a)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    meta = {"facts": machine_facts(), "command": a.command, "smoke": a.smoke, "reps": a.reps,
            "up_args": a.up_arg,
            "params": {k: getattr(a, k) for k in ("iperf_secs", "iperf_omit", "rtt_count",
                                                  "rtt_warmup", "rtt_secs", "load_secs",
                                                  "conn_secs", "conn_max", "mem_n",
                                                  "mem_reps")},
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    code = 0
    try:
        suite.run()
    except BaseException as e:  # report, clean up, exit non-zero
        suite.fail("suite", repr(e))
        code = 1
    finally:
        suite.cleanup()
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        meta["paths"] = [p.name for p in suite.paths]
        meta["failures"] = suite.failures
        meta["notes"] = suite.notes
        with open(os.path.join(a.out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    if suite.failures:
        log(f"{len(suite.failures)} failure(s):")
        for f in suite.failures:
            log(f"  {f}")
        if a.smoke:
            code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
