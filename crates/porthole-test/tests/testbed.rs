//! The simulated hosts themselves: hosts reach each other and nothing else, the root namespace
//! is untouched, netem delays and drops, a partition is silent and heals without losing the
//! bytes TCP was retransmitting, a link that goes down refuses and comes back, and teardown
//! leaves no namespace and no process, also with processes still running on the hosts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_test::testbed::{leftovers, Testbed};
use tokio::time::Instant;

fn root_links() -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .context("ip link show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Drop counters and state: only which links exist matters.
    Ok(text
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect::<Vec<_>>()
        .join(","))
}

fn echo_once(conn: &mut TcpStream, msg: &[u8]) -> Result<()> {
    conn.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).context("read the echo")?;
    ensure!(back == msg, "echo differs");
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn hosts_reach_each_other_and_nothing_else() -> Result<()> {
    porthole_test::require_root("hosts_reach_each_other_and_nothing_else");
    let before = root_links()?;
    let bed = Testbed::new(&["a", "b"])?;
    ensure!(
        root_links()? == before,
        "the testbed changed the root namespace's links"
    );
    let (a, b) = (bed.host("a"), bed.host("b"));
    ensure!(a.ip().octets()[..2] == [198, 18], "address {}", a.ip());
    let addr = b.echo_server()?;
    let mut conn = a.tcp_connect(addr, Duration::from_secs(5))?;
    echo_once(&mut conn, b"hello across hosts")?;

    // No route out: any other address is unreachable at once.
    let out = a.tcp_connect("192.0.2.1:80".parse()?, Duration::from_secs(5));
    let err = format!("{:#}", out.err().context("connect to 192.0.2.1 succeeded")?);
    ensure!(err.contains("unreachable"), "want unreachable, got {err}");
    // A listener in the test's own namespace is not on the hosts' loopback.
    let outside = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = outside.local_addr()?.port();
    ensure!(
        a.tcp_connect(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5)
        )
        .is_err(),
        "host a reached a listener of the root namespace"
    );
    // Each host's loopback is its own.
    let lo = a.tcp_listen("127.0.0.1:0".parse()?)?;
    a.tcp_connect(lo.local_addr()?, Duration::from_secs(5))?;
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn a_host_behind_nat_reaches_out_and_cannot_be_reached() -> Result<()> {
    porthole_test::require_root("a_host_behind_nat_reaches_out_and_cannot_be_reached");
    let before = root_links()?;
    let mut bed = Testbed::new(&["router", "server"])?;
    let inside = bed.add_behind_nat("inside", "router")?;
    ensure!(root_links()? == before, "NAT changed the root namespace");
    let (router, server) = (bed.host("router").clone(), bed.host("server").clone());
    ensure!(
        inside.ip().octets()[..2] == [198, 19],
        "address {}",
        inside.ip()
    );

    // Out: the server sees the connection coming from the router's address.
    let listener = server.tcp_listen(SocketAddr::from((server.ip(), 0)))?;
    let addr = listener.local_addr()?;
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    let mut conn = inside.tcp_connect(addr, Duration::from_secs(5))?;
    let peer = accept.join().expect("accept thread")?;
    ensure!(
        peer.ip() == std::net::IpAddr::V4(router.ip()),
        "the server saw {peer}, not the router {}",
        router.ip()
    );
    conn.write_all(b"x")?;
    let echo = server.echo_server()?;
    echo_once(
        &mut inside.tcp_connect(echo, Duration::from_secs(5))?,
        b"through the NAT",
    )?;

    // In: nobody routes to the private address...
    let private = inside.tcp_listen(SocketAddr::from((inside.ip(), 0)))?;
    let target = private.local_addr()?;
    let err = server
        .tcp_connect(target, Duration::from_secs(2))
        .err()
        .context("the server reached the host behind NAT")?;
    ensure!(format!("{err:#}").contains("unreachable"), "{err:#}");
    // ...and a server that does route through the router still gets nothing through: the
    // router forwards only replies to connections made from inside.
    server.run(
        "ip",
        &[
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &router.ip().to_string(),
        ],
    )?;
    ensure!(
        server.tcp_connect(target, Duration::from_secs(2)).is_err(),
        "the router forwarded a connection into the NAT"
    );
    // The host behind NAT has no route out of the testbed either.
    ensure!(inside
        .tcp_connect("192.0.2.1:80".parse()?, Duration::from_secs(2))
        .is_err());
    drop(private);
    let id = bed.id().to_string();
    bed.teardown()?;
    ensure!(leftovers(&id).is_empty());
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn netem_delays_and_drops() -> Result<()> {
    porthole_test::require_root("netem_delays_and_drops");
    let bed = Testbed::new(&["a", "b"])?;
    let (a, b) = (bed.host("a"), bed.host("b"));
    let addr = b.echo_server()?;

    // Loss in the kernel (nft): 100% blocks, 0% restores.
    a.set_loss(100.0)?;
    ensure!(
        b.tcp_connect(SocketAddr::from((a.ip(), 9)), Duration::from_millis(500))
            .err()
            .is_some_and(|e| format!("{e:#}").contains("timed out")),
        "b got an answer from a through 100% loss"
    );
    a.set_loss(0.0)?;
    let mut conn = a.tcp_connect(addr, Duration::from_secs(5))?;
    echo_once(&mut conn, b"no loss")?;

    if let Err(e) = a.netem("delay 40ms") {
        if format!("{e:#}").contains(porthole_test::testbed::NO_NETEM) {
            eprintln!("\n*** SKIPPED the delay half of netem_delays_and_drops: {e:#} ***\n");
            return Ok(());
        }
        return Err(e);
    }
    b.netem("delay 40ms")?;
    let mut conn = a.tcp_connect(addr, Duration::from_secs(5))?;
    let start = Instant::now();
    echo_once(&mut conn, b"ping")?;
    let rtt = start.elapsed();
    ensure!(
        rtt >= Duration::from_millis(80),
        "round trip {rtt:?} < 80 ms"
    );
    a.clear_netem()?;
    b.clear_netem()?;
    let start = Instant::now();
    echo_once(&mut conn, b"ping")?;
    ensure!(
        start.elapsed() < Duration::from_millis(40),
        "netem still active after clear: {:?}",
        start.elapsed()
    );
    a.netem("loss 100%")?;
    ensure!(
        a.tcp_connect(addr, Duration::from_millis(500)).is_err(),
        "connected through 100% loss"
    );
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn partition_is_silent_and_heals_without_loss() -> Result<()> {
    porthole_test::require_root("partition_is_silent_and_heals_without_loss");
    let bed = Testbed::new(&["a", "b", "c"])?;
    let (a, b, c) = (bed.host("a"), bed.host("b"), bed.host("c"));
    let addr_b = b.echo_server()?;
    let addr_c = c.echo_server()?;
    let mut to_b = a.tcp_connect(addr_b, Duration::from_secs(5))?;
    let mut to_c = a.tcp_connect(addr_c, Duration::from_secs(5))?;
    echo_once(&mut to_b, b"before")?;

    bed.partition("a", "b")?;
    // The socket stays open and hears nothing: no reset, no error.
    to_b.write_all(b"during")?;
    to_b.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 16];
    match to_b.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => anyhow::bail!("partitioned read returned {other:?}, want a timeout"),
    }
    ensure!(
        b.tcp_connect(
            SocketAddr::from((a.ip(), addr_b.port())),
            Duration::from_millis(500)
        )
        .is_err(),
        "b reached a across the partition"
    );
    // Other paths are untouched.
    echo_once(&mut to_c, b"a and c still talk")?;

    bed.heal("a", "b")?;
    // TCP retransmits what was sent during the partition.
    to_b.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut back = [0u8; 6];
    to_b.read_exact(&mut back)
        .context("the bytes of the partition did not arrive after healing")?;
    ensure!(&back == b"during");
    echo_once(&mut to_b, b"after")?;
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn link_down_refuses_and_link_up_restores() -> Result<()> {
    porthole_test::require_root("link_down_refuses_and_link_up_restores");
    let bed = Testbed::new(&["a", "b"])?;
    let (a, b) = (bed.host("a"), bed.host("b"));
    let addr = b.echo_server()?;
    a.link_down()?;
    let err = a
        .tcp_connect(addr, Duration::from_secs(2))
        .err()
        .context("connected over a link that is down")?;
    ensure!(format!("{err:#}").contains("unreachable"), "{err:#}");
    a.link_up()?;
    // The kernel brings the address and route back with the link; connecting is the signal.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match a.tcp_connect(addr, Duration::from_secs(2)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    echo_once(&mut conn, b"back")?;
    Ok(())
}

#[test]
#[ignore = "needs root (simulated hosts are network namespaces): sudo cargo test -- --ignored; scripts/test.sh runs it"]
fn teardown_leaves_nothing_even_with_processes_running() -> Result<()> {
    porthole_test::require_root("teardown_leaves_nothing_even_with_processes_running");
    let mut bed = Testbed::new(&["a", "b"])?;
    let id = bed.id().to_string();
    ensure!(
        leftovers(&id).len() == 3,
        "want 2 hosts + switch: {:?}",
        leftovers(&id)
    );
    let mut sleeper = bed
        .host("a")
        .command("sleep")
        .arg("1000")
        .spawn()
        .context("spawn sleep on host a")?;
    // Tear down once it is inside (spawn returns before `ip netns exec` has entered).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !bed.host("a").holds(sleeper.id()) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "sleep never entered host a's namespace"
        );
        std::thread::yield_now();
    }
    bed.teardown()?;
    ensure!(leftovers(&id).is_empty(), "left: {:?}", leftovers(&id));
    let status = sleeper.wait()?;
    ensure!(!status.success(), "the host's process was not killed");

    // Dropping (the path of a failing test) cleans up too.
    let id = {
        let bed = Testbed::new(&["x"])?;
        bed.id().to_string()
    };
    ensure!(
        leftovers(&id).is_empty(),
        "left after drop: {:?}",
        leftovers(&id)
    );
    Ok(())
}
