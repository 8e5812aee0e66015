//! The crate's tests that make real namespaces: the bind-mounted ones need root and are
//! ignored without it (`scripts/test.sh` runs them as root); the rootless ones run anywhere
//! unprivileged user namespaces are allowed.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::pool::SOCKET_BATCH;

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "porthole-netns-test-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The bind-mounted namespaces need root (CI runs as root): these tests are ignored with
/// that reason otherwise, and fail here if run so; `rootless_namespace_works_and_leaves_nothing`
/// covers the unprivileged case.
fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (bind-mounted namespaces): run it as root, e.g. sudo cargo test -- --ignored {test}"
    );
}

/// Starts python3 inside `ns` with a socket `s` listening on 127.0.0.1:0, then runs
/// `serve`; returns the child and the port it listens on.
fn python_server_in(ns: &NetNs, serve: &str) -> (std::process::Child, u16) {
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        &format!(
            "import socket\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(64)\n\
             print(s.getsockname()[1],flush=True)\n{serve}"
        ),
    ])
    .stdout(std::process::Stdio::piped());
    ns.enter_on_spawn(&mut cmd);
    let mut child = cmd.spawn().expect("spawn python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read port");
    (child, line.trim().parse().expect("port"))
}

#[tokio::test]
#[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
async fn listener_in_namespace_is_reachable_only_through_dial() {
    require_root("listener_in_namespace_is_reachable_only_through_dial");
    let dir = tempdir("dial");
    let path = dir.join("ns1");
    let ns = NetNs::create(&path, "pod-uid-1", Isolation::Privileged)
        .expect("create namespace (needs root)");
    assert!(is_mounted(&path).expect("mountinfo"));

    // A server inside the namespace that upper-cases one message.
    let (mut child, port) = python_server_in(
        &ns,
        "c,_=s.accept();c.sendall(c.recv(100).upper());c.close()",
    );

    // Not reachable from the host namespace: the port is free there.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());

    let mut s = ns.dial(port, DEFAULT_CONNECT_TIMEOUT).await.expect("dial");
    s.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"HELLO");
    child.wait().expect("wait python");

    // Nothing listens any more: both families are named in the error.
    let err = ns
        .dial(port, DEFAULT_CONNECT_TIMEOUT)
        .await
        .expect_err("refused");
    assert_eq!(
        err.cause(),
        format!(
            "failed to connect to localhost:{port} inside namespace \"pod-uid-1\": IPv4: connect 127.0.0.1:{port}: connection refused; IPv6: connect [::1]:{port}: connection refused"
        )
    );

    ns.remove().expect("remove");
    assert!(!is_mounted(&path).expect("mountinfo"));
    assert!(!path.exists());
    let err = ns
        .dial(port, DEFAULT_CONNECT_TIMEOUT)
        .await
        .expect_err("closed");
    assert!(err.cause().contains("is closed"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A loopback listener made for reverse forwarding lives inside the namespace only, a
/// second one on the same port is refused as in use, and dropping it frees the port.
#[tokio::test]
#[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
async fn loopback_listener_lives_in_the_namespace_until_dropped() {
    require_root("loopback_listener_lives_in_the_namespace_until_dropped");
    let dir = tempdir("listen");
    let ns = NetNs::create(&dir.join("ns1"), "pod-uid-listen", Isolation::Privileged)
        .expect("create namespace");
    // A free port inside the namespace: bind 0, read it, let it go.
    let port = ns
        .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 1)
        .await
        .expect("listen on port 0")
        .local_addr()
        .expect("local addr")
        .port();
    let listeners = ns.listen_loopback(port).await.expect("listen");
    assert_eq!(listeners.len(), 2, "127.0.0.1 and ::1");
    // Not on the host: the port is free there.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    let mut conn = ns.dial(port, DEFAULT_CONNECT_TIMEOUT).await.expect("dial");
    let (mut accepted, _) = listeners[0].accept().await.expect("accept");
    conn.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    assert_eq!(
        ns.listen_loopback(port).await.expect_err("in use"),
        ListenError::InUse { port }
    );
    drop(listeners);
    let err = ns
        .dial(port, DEFAULT_CONNECT_TIMEOUT)
        .await
        .expect_err("refused after drop");
    assert!(err.cause().contains("connection refused"), "{err}");
    assert_eq!(err.kind(), Some(std::io::ErrorKind::ConnectionRefused));
    // With a connection of the old listener still open, the port can be taken again.
    let again = ns.listen_loopback(port).await.expect("listen again");
    drop((again, conn, accepted));
    ns.remove().expect("remove");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// More dials than one batch of sockets: every one (spare or fresh) reaches a listener
/// that exists only inside the namespace, and removal drops the spares.
#[tokio::test]
#[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
async fn spare_sockets_are_made_inside_the_namespace() {
    require_root("spare_sockets_are_made_inside_the_namespace");
    let dir = tempdir("spare");
    let ns = NetNs::create(&dir.join("ns1"), "pod-uid-2", Isolation::Privileged)
        .expect("create namespace");
    const N: usize = SOCKET_BATCH * 2 + 3;
    const BURST: usize = 40;
    let (mut child, port) = python_server_in(
        &ns,
        &format!("for _ in range({N}+{BURST}):\n c,_=s.accept();c.sendall(b'k');c.close()"),
    );
    for i in 0..N {
        let mut s = ns
            .dial(port, DEFAULT_CONNECT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("dial {i}: {e}"));
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("read");
    }
    let spare = |ns: &NetNs| ns.inner.spare.lock().unwrap().v4.len();
    assert_eq!(spare(&ns), SOCKET_BATCH * 3 - N);
    // A burst of concurrent dials: one batch in flight at a time, the pool stays bounded.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let ns = ns.clone();
        burst.spawn(async move {
            let mut s = ns
                .dial(port, DEFAULT_CONNECT_TIMEOUT)
                .await
                .expect("burst dial");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
        });
    }
    while let Some(r) = burst.join_next().await {
        r.expect("burst task");
    }
    assert!(spare(&ns) <= SOCKET_BATCH, "{} spare sockets", spare(&ns));
    child.wait().expect("wait python");
    ns.remove().expect("remove");
    assert_eq!(spare(&ns), 0);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
#[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn cleanup_dir_removes_leftover_mounts() {
    require_root("cleanup_dir_removes_leftover_mounts");
    let dir = tempdir("cleanup");
    let path = dir.join("leftover");
    let ns = NetNs::create(&path, "leftover", Isolation::Privileged)
        .expect("create namespace (needs root)");
    // Simulate a crash: the handle is forgotten, the mount stays.
    std::mem::forget(ns);
    assert!(is_mounted(&path).expect("mountinfo"));
    let removed = cleanup_dir(&dir).expect("cleanup");
    assert_eq!(removed, vec![path.clone()]);
    assert!(!is_mounted(&path).expect("mountinfo"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
#[tokio::test]
async fn rootless_namespace_works_and_leaves_nothing() {
    let ns = NetNs::create_rootless("rootless-test").expect("rootless namespace");
    assert!(ns.is_rootless());
    let helper_ns = ns.path().to_path_buf();
    assert!(helper_ns.exists());
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import os,socket\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen()\n\
         print(s.getsockname()[1],os.getuid(),flush=True)\nc,_=s.accept();c.sendall(b'ok');c.close()",
    ])
    .stdout(std::process::Stdio::piped());
    ns.enter_on_spawn(&mut cmd);
    let mut child = cmd
        .spawn()
        .expect("spawn python3 in the rootless namespace");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read port");
    let mut parts = line.split_whitespace();
    let port: u16 = parts.next().and_then(|p| p.parse().ok()).expect("port");
    assert_eq!(parts.next(), Some("0"), "uid inside the user namespace");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    let mut s = ns.dial(port, DEFAULT_CONNECT_TIMEOUT).await.expect("dial");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    assert_eq!(buf, b"ok");
    child.wait().expect("wait python");
    ns.remove().expect("remove");
    drop(ns);
    // The helper is gone (and reaped) once removed; its /proc entry disappears.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while helper_ns.exists() && tokio::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(!helper_ns.exists(), "helper process still alive");
}

/// A UDP socket made by the namespace's thread (or the rootless helper) reaches a UDP
/// echo that exists only inside the namespace, and a port with no listener refuses.
async fn udp_echo_through(ns: &NetNs) {
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('127.0.0.1',0))\nprint(s.getsockname()[1],flush=True)\n\
         d,a=s.recvfrom(100)\ns.sendto(d.upper(),a)",
    ])
    .stdout(std::process::Stdio::piped());
    ns.enter_on_spawn(&mut cmd);
    let mut child = cmd.spawn().expect("spawn python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read port");
    let port: u16 = line.trim().parse().expect("port");
    let sock = ns
        .udp_connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .expect("udp socket in the namespace");
    sock.send(b"datagram").await.expect("send");
    let mut buf = [0u8; 100];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("an answer")
        .expect("recv");
    assert_eq!(&buf[..n], b"DATAGRAM");
    child.wait().expect("wait python");
    // Nothing listens now: the ICMP port unreachable shows as ECONNREFUSED.
    sock.send(b"again").await.expect("send");
    let err = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("the refusal")
        .expect_err("refused");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
#[ignore = "needs root (bind-mounted network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
async fn udp_sockets_are_made_inside_the_namespace() {
    require_root("udp_sockets_are_made_inside_the_namespace");
    let dir = tempdir("udp");
    let ns = NetNs::create(&dir.join("ns1"), "pod-uid-udp", Isolation::Privileged)
        .expect("create namespace");
    udp_echo_through(&ns).await;
    ns.remove().expect("remove");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn rootless_udp_sockets_come_from_the_helper() {
    let ns = NetNs::create_rootless("rootless-udp").expect("rootless namespace");
    udp_echo_through(&ns).await;
    ns.remove().expect("remove");
}
