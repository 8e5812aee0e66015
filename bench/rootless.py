#!/usr/bin/env python3
"""Rootless vs root `porthole up`, side by side in one run (issue 17).

Two clusters run at once, each with the bench pod (`porthole-bench echo` on 127.0.0.1:7001 and
`iperf3 -s` on 127.0.0.1:5201 in the pod's network namespace):
  root      `porthole up` as root: privileged pods (bind-mounted network namespaces);
  rootless  `porthole up` as an unprivileged user (setpriv, no privilege): pods in user
            namespaces owned by that user.
The client is the same for both: `porthole port-forward --transport spdy pbench :7001 :5201`
as root. Per rep, both clusters in turn (the order alternates rep by rep): one-connection
throughput client → pod (`iperf3 -c`, receiver MB/s) and new connections per second with one
client (`porthole-bench connrate --conc 1`: connect, 64 B echo, half-close). The table gives
medians and rootless ÷ root.

Run by bench/rootless.sh (which builds); needs root, iperf3, /usr/bin/kubectl or PORTHOLE_KUBECTL
for the pod wait, setpriv and useradd (util-linux, passwd).
"""

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

POD = "pbench"
ECHO_PORT = 7001
IPERF_PORT = 5201
MODES = ("root", "rootless")


def die(msg):
    print(f"bench/rootless: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


class Proc:
    """A child whose stdout lines are collected on a thread; stderr to a log file."""

    def __init__(self, name, argv, out_dir, env=None, preexec=None):
        self.name = name
        self.err_path = os.path.join(out_dir, f"{name}.stderr")
        self.lines = []
        self.cond = threading.Condition()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  stderr=open(self.err_path, "w"), env=env,
                                  preexec_fn=preexec, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern, timeout):
        """The first stdout line matching `pattern` (a regex), waiting up to `timeout` s."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    raise RuntimeError(f"{self.name}: no line matching {pattern!r}\n"
                                       f"{self.report()}")
                self.cond.wait(min(left, 1.0))

    def report(self):
        with open(self.err_path, errors="replace") as f:
            err = f.read()[-3000:]
        return f"--- {self.name} stdout ---\n" + "\n".join(self.lines[-20:]) + \
            f"\n--- {self.name} stderr ---\n{err}"

    def stop(self, timeout=60):
        """SIGINT (Ctrl-C, a clean stop), then SIGKILL if it takes too long."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


def pod_yaml(bench, iperf3):
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {POD}}}
spec:
  containers:
  - name: echo
    image: host
    command: ["{bench}", "echo", "--listen", "127.0.0.1:{ECHO_PORT}"]
  - name: iperf
    image: host
    command: ["{iperf3}", "-s", "-B", "127.0.0.1", "-p", "{IPERF_PORT}", "--rcv-timeout", "10000"]
"""


def ensure_user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--create-home", "--home-dir",
                        f"/var/lib/{name}", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


class Cluster:
    def __init__(self, mode, a, work, bins, procs):
        self.mode = mode
        d = os.path.join(work, mode)
        os.makedirs(d)
        pod = os.path.join(d, "pod.yaml")
        with open(pod, "w") as f:
            f.write(pod_yaml(bins["bench"], shutil.which("iperf3")))
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "RUST_LOG": "info", "LANG": "C.UTF-8"}
        argv = [bins["porthole"], "up", "-f", pod, "--data-dir", os.path.join(d, "data"),
                "--listen", "127.0.0.1:0"]
        if mode == "rootless":
            user = ensure_user(a.user)
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", d], check=True)
            env["HOME"] = user.pw_dir
            argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                    "--init-groups", "--"] + argv
        else:
            env["HOME"] = "/root"
        self.up = Proc(f"up-{mode}", argv, work, env=env)
        procs.append(self.up)
        self.kubeconfig = self.up.wait_line(r"cluster ready, kubeconfig at (\S+)", 180).group(1)
        with open(self.up.err_path) as f:
            err = f.read()
        want = {"root": "pods run privileged: ", "rootless": "pods run rootless: "}[mode]
        if want not in err:
            raise RuntimeError(f"{mode}: `porthole up` did not log {want!r}\n{self.up.report()}")
        self.env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        kubectl = os.environ.get("PORTHOLE_KUBECTL", "kubectl")
        r = subprocess.run([kubectl, "wait", "--for=condition=Ready", f"pod/{POD}",
                            "--timeout=120s"], capture_output=True, env=self.env, timeout=150)
        if r.returncode != 0:
            raise RuntimeError(f"{mode}: pod not Ready: {r.stderr.decode()}\n{self.up.report()}")
        self.pf = Proc(f"pf-{mode}", [bins["porthole"], "port-forward", "--transport", "spdy",
                                      POD, f":{ECHO_PORT}", f":{IPERF_PORT}"], work, env=self.env)
        procs.append(self.pf)
        self.echo = int(self.pf.wait_line(rf"^Forwarding from 127\.0\.0\.1:(\d+) -> {ECHO_PORT}$",
                                          60).group(1))
        self.iperf = int(self.pf.wait_line(
            rf"^Forwarding from 127\.0\.0\.1:(\d+) -> {IPERF_PORT}$", 60).group(1))


def iperf(port, secs, omit):
    """One connection client → pod; receiver MB/s. iperf3 refuses a test while the previous one
    is finishing on the server (its listener is closed meanwhile): retried a few times."""
    last = ""
    for _ in range(20):
        r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs),
                            "-O", str(omit), "-J", "--connect-timeout", "10000"],
                           capture_output=True, timeout=secs + omit + 60)
        j = json.loads(r.stdout or b"{}")
        if "end" in j and "error" not in j:
            return j["end"]["sum_received"]["bits_per_second"] / 8e6
        last = j.get("error", r.stderr.decode()[-300:])
        time.sleep(0.3)
    raise RuntimeError(f"iperf3: {last}")


def connrate(bench, port, secs):
    r = subprocess.run([bench, "connrate", "--connect", f"127.0.0.1:{port}", "--conc", "1",
                        "--secs", str(secs)], capture_output=True, timeout=secs + 120)
    if r.returncode != 0:
        raise RuntimeError(f"connrate: {r.stderr.decode()[-300:]}")
    j = json.loads(r.stdout.decode().strip().splitlines()[-1])
    if j["errors"]:
        raise RuntimeError(f"connrate: {j['errors']} errors, first: {j['first_error']}")
    return j["conn_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, help="where porthole and porthole-bench are")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--iperf-secs", type=int, default=4)
    ap.add_argument("--conn-secs", type=float, default=4)
    ap.add_argument("--smoke", action="store_true", help="1 rep, 1 s per test")
    ap.add_argument("--user", default=os.environ.get("PORTHOLE_ROOTLESS_USER",
                                                     "porthole-rootless"))
    ap.add_argument("--out", default=f"/tmp/porthole-bench-rootless-{time.strftime('%Y%m%d-%H%M%S')}")
    a = ap.parse_args()
    if a.smoke:
        a.reps, a.iperf_secs, a.conn_secs = 1, 1, 1
    omit = 0 if a.smoke else 1
    if os.geteuid() != 0:
        die("run as root: the root cluster needs it, and the rootless one runs as another user")
    for tool in ("iperf3", "setpriv"):
        if not shutil.which(tool):
            die(f"{tool} is missing")
    os.makedirs(a.out, exist_ok=True)
    # The unprivileged user must read the binaries: copies in a world-readable directory.
    work = os.path.join(a.out, "work")
    os.makedirs(os.path.join(work, "bin"))
    os.chmod(a.out, 0o755)
    os.chmod(work, 0o755)
    bins = {}
    for name, key in (("porthole", "porthole"), ("porthole-bench", "bench")):
        src = os.path.join(a.bin_dir, name)
        if not os.access(src, os.X_OK):
            die(f"no {src}")
        bins[key] = os.path.join(work, "bin", name)
        shutil.copy2(src, bins[key])
        os.chmod(bins[key], 0o755)

    procs = []
    results = {m: {"thr1_MBps": [], "conn1_per_s": []} for m in MODES}
    failures = []
    try:
        clusters = {m: Cluster(m, a, work, bins, procs) for m in MODES}
        for rep in range(a.reps):
            order = MODES if rep % 2 == 0 else tuple(reversed(MODES))
            for m in order:
                c = clusters[m]
                try:
                    results[m]["thr1_MBps"].append(iperf(c.iperf, a.iperf_secs, omit))
                    results[m]["conn1_per_s"].append(connrate(bins["bench"], c.echo, a.conn_secs))
                except Exception as e:  # noqa: BLE001 — recorded, and fails the run at the end
                    failures.append(f"rep {rep} {m}: {e}")
            print(f"bench/rootless: rep {rep + 1}/{a.reps}: " + ", ".join(
                f"{m} " + " ".join(f"{v[-1]:,.0f} {unit}" for v, unit in (
                    (results[m]["thr1_MBps"], "MB/s"), (results[m]["conn1_per_s"], "conn/s"))
                    if v) for m in MODES), flush=True)
    except Exception as e:  # noqa: BLE001
        failures.append(str(e))
    finally:
        for p in reversed(procs):
            rc = p.stop()
            if p.name.startswith("up-") and rc != 0:
                failures.append(f"{p.name} exited {rc} after Ctrl-C\n{p.report()}")

    # The clusters' state (PKI, stores) is of no further use; the logs stay.
    for m in MODES:
        shutil.rmtree(os.path.join(work, m), ignore_errors=True)
    shutil.rmtree(os.path.join(work, "bin"), ignore_errors=True)
    with open(os.path.join(a.out, "results.tsv"), "w") as f:
        f.write("mode\tmetric\trep\tvalue\n")
        for m in MODES:
            for metric, vals in results[m].items():
                for i, v in enumerate(vals):
                    f.write(f"{m}\t{metric}\t{i}\t{v:.3f}\n")
    lines = [f"Rootless vs root `porthole up`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{a.reps} interleaved reps, medians (iperf3 {a.iperf_secs} s, connrate "
             f"{a.conn_secs:g} s), client `porthole port-forward --transport spdy` as root:", "",
             "| `porthole up` | 1 conn MB/s | new conn/s (1 client) |", "|---|---:|---:|"]
    med = {m: {k: statistics.median(v) if v else float("nan") for k, v in results[m].items()}
           for m in MODES}
    lines.append(f"| as root (privileged pods) | {med['root']['thr1_MBps']:,.0f} | "
                 f"{med['root']['conn1_per_s']:,.0f} |")
    lines.append(f"| as `{a.user}` (rootless pods) | {med['rootless']['thr1_MBps']:,.0f} | "
                 f"{med['rootless']['conn1_per_s']:,.0f} |")
    ratio = {k: med["rootless"][k] / med["root"][k] if med["root"][k] else float("nan")
             for k in ("thr1_MBps", "conn1_per_s")}
    lines.append(f"| rootless ÷ root | {ratio['thr1_MBps']:.2f} | {ratio['conn1_per_s']:.2f} |")
    table = "\n".join(lines)
    with open(os.path.join(a.out, "rootless.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table + f"\n\nraw results: {a.out}/results.tsv")
    if failures:
        die("\n  ".join(failures))


if __name__ == "__main__":
    main()
