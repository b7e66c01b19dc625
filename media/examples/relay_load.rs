//! Load check for the relay: N calls on loopback, each phone sending 20 ms G.711 packets
//! (50 packets/s per direction), relays on one dedicated thread whose CPU time is reported.
//!
//! `cargo run -p trunkline-media --example relay_load -- [calls] [seconds]` (defaults 500, 5).
//! Only loopback addresses are used. Numbers from a debug build are pessimistic, and there the
//! single-threaded generator falls behind beyond a few hundred calls: compare `sent` with
//! `calls × 100 × seconds`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use trunkline_media::{LegSockets, Relay, RelayHandle};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// CPU time (user + system) of the calling thread, from /proc (Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    let ticks = f.iter().sum::<u64>();
    Duration::from_millis(ticks * 10) // USER_HZ = 100 on Linux
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);

    // Relays: their own single-threaded runtime on their own thread.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<(SocketAddr, SocketAddr)>>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    let relay_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let phones = rx.recv().unwrap();
            let mut handles: Vec<RelayHandle> = Vec::with_capacity(phones.len());
            let mut relay_addrs = Vec::with_capacity(phones.len());
            for (a, b) in phones {
                let leg_a = LegSockets::bind_ephemeral(LOCALHOST).await.unwrap();
                let leg_b = LegSockets::bind_ephemeral(LOCALHOST).await.unwrap();
                relay_addrs.push((leg_a.rtp_local_addr(), leg_b.rtp_local_addr()));
                handles.push(Relay::start(leg_a, leg_b, Some(a), Some(b)));
            }
            ready_tx.send(relay_addrs).unwrap();
            // Measure while the traffic runs.
            let start_cpu = thread_cpu();
            let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(seconds));
                let _ = stop_tx.send(());
            });
            let _ = (&mut stop_rx).await;
            let cpu = thread_cpu() - start_cpu;
            let (mut fwd, mut dropped) = (0, 0);
            for h in &handles {
                let s = h.stats();
                fwd += s.a_to_b_packets + s.b_to_a_packets;
                dropped += s.dropped;
            }
            cpu_tx.send((cpu, fwd, dropped)).unwrap();
        });
    });

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut phones = Vec::with_capacity(calls);
        let mut addrs = Vec::with_capacity(calls);
        for _ in 0..calls {
            let a = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            let b = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
            addrs.push((a.local_addr().unwrap(), b.local_addr().unwrap()));
            phones.push((Arc::new(a), Arc::new(b)));
        }
        tx.send(addrs).unwrap();
        let relay_addrs = tokio::task::spawn_blocking(move || ready_rx.recv().unwrap()).await.unwrap();

        let received = Arc::new(AtomicU64::new(0));
        for (a, b) in &phones {
            for sock in [a.clone(), b.clone()] {
                let received = received.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while sock.recv_from(&mut buf).await.is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
        let mut packet = vec![0u8; 172];
        packet[0] = 0x80;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut sent = 0u64;
        let mut seq: u16 = 0;
        while Instant::now() < end {
            tick.tick().await;
            seq = seq.wrapping_add(1);
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            for ((a, b), (ra, rb)) in phones.iter().zip(&relay_addrs) {
                sent += u64::from(a.send_to(&packet, *ra).await.is_ok());
                sent += u64::from(b.send_to(&packet, *rb).await.is_ok());
            }
        }
        let (cpu, fwd, dropped) = tokio::task::spawn_blocking(move || cpu_rx.recv().unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = received.load(Ordering::Relaxed);
        let pps = fwd as f64 / seconds as f64;
        println!(
            "calls={calls} seconds={seconds} sent={sent} forwarded={fwd} received={got} dropped={dropped} \
             relay_pps={pps:.0} relay_cpu={:.2}s ({:.1}% of one core, {:.2} µs/packet)",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / seconds as f64,
            1e6 * cpu.as_secs_f64() / fwd.max(1) as f64,
        );
    });
    relay_thread.join().unwrap();
}
