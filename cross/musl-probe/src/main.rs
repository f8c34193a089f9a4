//! Real NEW and DESTROY events through the crate's reader, with checked fields, on whatever
//! kernel runs this. Prints each event as the publisher's JSON, then one verdict line:
//! `MUSL-PROBE-RESULT: PASS ...` or `MUSL-PROBE-RESULT: FAIL ...`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use conntrack_collector::json;
use conntrack_collector::queue::Pop;
use conntrack_collector::reader::{Options, Stream};
use conntrack_collector::{Event, EventType};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One answered TCP flow; its client and server ports.
fn tcp_flow() -> std::io::Result<(u16, u16)> {
    let listener = TcpListener::bind((LOOPBACK, 0))?;
    let dport = listener.local_addr()?.port();
    let mut client = TcpStream::connect((LOOPBACK, dport))?;
    let (mut server, _) = listener.accept()?;
    let mut buf = [0u8; 16];
    client.write_all(b"hello")?;
    let n = server.read(&mut buf)?;
    server.write_all(&buf[..n])?;
    client.read_exact(&mut buf[..n])?;
    Ok((client.local_addr()?.port(), dport))
}

/// One answered UDP flow; its client and server ports.
fn udp_flow() -> std::io::Result<(u16, u16)> {
    let client = UdpSocket::bind((LOOPBACK, 0))?;
    let server = UdpSocket::bind((LOOPBACK, 0))?;
    let dport = server.local_addr()?.port();
    let mut buf = [0u8; 16];
    client.send_to(b"ping", (LOOPBACK, dport))?;
    let (n, peer) = server.recv_from(&mut buf)?;
    server.send_to(&buf[..n], peer)?;
    client.recv_from(&mut buf)?;
    Ok((client.local_addr()?.port(), dport))
}

fn check_flow(events: &[Event], l4proto: u8, ports: (u16, u16), failures: &mut Vec<String>) {
    let name = if l4proto == 6 { "tcp" } else { "udp" };
    let of_flow: Vec<&Event> = events
        .iter()
        .filter(|e| e.original.l4proto == l4proto && (e.original.sport, e.original.dport) == ports)
        .collect();
    let new = of_flow.iter().find(|e| e.event_type == EventType::New);
    let destroy = of_flow.iter().find(|e| e.event_type == EventType::Destroy);
    let (Some(new), Some(destroy)) = (new, destroy) else {
        failures.push(format!("{name}: no NEW and DESTROY for ports {ports:?}"));
        return;
    };
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            failures.push(format!("{name}: {what}"));
        }
    };
    expect(new.id != 0 && new.id == destroy.id, "NEW and DESTROY share a non-zero Id");
    expect(new.l3proto == 2, "Layer3 Protonum 2");
    for e in [new, destroy] {
        expect(e.original.src == Some(LOOPBACK) && e.original.dst == Some(LOOPBACK), "addresses");
        expect((e.reply.sport, e.reply.dport) == (ports.1, ports.0), "reply ports");
    }
    expect(destroy.original.packets > 0 && destroy.original.bytes > 0, "DESTROY counters");
    expect(destroy.reply.packets > 0, "DESTROY reply counters");
    expect(!destroy.unreplied(), "DESTROY is replied");
}

fn main() {
    let stream = match Stream::start(Options::default()) {
        Ok(stream) => stream,
        Err(e) => {
            println!("MUSL-PROBE-RESULT: FAIL cannot start the reader: {e}");
            return;
        }
    };
    let flows = tcp_flow().and_then(|tcp| Ok((tcp, udp_flow()?)));
    let (tcp, udp) = match flows {
        Ok(flows) => flows,
        Err(e) => {
            println!("MUSL-PROBE-RESULT: FAIL traffic: {e}");
            return;
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("conntrack").arg("-F").output();
    let mut events = Vec::new();
    while let Pop::Event(event, _) = stream.pop(Duration::from_secs(2)) {
        println!("musl-probe: {}", String::from_utf8_lossy(&json::to_json(&event)));
        events.push(event);
    }
    stream.close();
    let mut failures = Vec::new();
    check_flow(&events, 6, tcp, &mut failures);
    check_flow(&events, 17, udp, &mut failures);
    let verdict = if failures.is_empty() { "PASS" } else { "FAIL" };
    println!(
        "MUSL-PROBE-RESULT: {verdict} {} events, arch {}, failures {failures:?}",
        events.len(),
        std::env::consts::ARCH
    );
}
