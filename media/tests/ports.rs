//! PortAllocator over real UDP sockets on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, UdpSocket as StdUdpSocket};

use common::{LOCALHOST, free_range};
use trunkline_media::{AllocError, PortAllocator};

#[test]
fn ranges_hold_even_pairs_only() {
    let alloc = PortAllocator::new(5001..=5004, LOCALHOST).unwrap();
    assert_eq!(alloc.capacity(), 1); // 5002/5003; 5004 has no 5005
    let alloc = PortAllocator::new(5000..=5009, LOCALHOST).unwrap();
    assert_eq!(alloc.capacity(), 5);
    assert!(matches!(PortAllocator::new(5001..=5002, LOCALHOST), Err(AllocError::EmptyRange { .. })));
    assert!(matches!(PortAllocator::new(65535..=65535, LOCALHOST), Err(AllocError::EmptyRange { .. })));
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = PortAllocator::new(6000..=5000, LOCALHOST);
    assert!(matches!(reversed, Err(AllocError::EmptyRange { .. })));
    assert_eq!(PortAllocator::new(0..=3, LOCALHOST).unwrap().capacity(), 1); // never port 0
}

#[test]
fn allocate_outside_a_runtime_is_an_error() {
    let alloc = PortAllocator::new(free_range(1), LOCALHOST).unwrap();
    assert!(matches!(alloc.allocate(), Err(AllocError::NoRuntime)));
    assert_eq!(alloc.available(), 1);
}

#[tokio::test]
async fn pairs_are_even_adjacent_and_bound() {
    let range = free_range(4);
    let alloc = PortAllocator::new(range.clone(), LOCALHOST).unwrap();
    let mut legs = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let leg = alloc.allocate().unwrap();
        let port = leg.rtp_port();
        assert_eq!(port % 2, 0);
        assert!(range.contains(&port) && range.contains(&(port + 1)));
        assert_eq!(leg.rtp_local_addr(), (LOCALHOST, port).into());
        assert_eq!(leg.rtcp_local_addr(), (LOCALHOST, port + 1).into());
        assert!(leg.is_pooled());
        assert!(seen.insert(port));
        // Really bound: nobody else can have these ports now.
        assert!(StdUdpSocket::bind((LOCALHOST, port)).is_err());
        assert!(StdUdpSocket::bind((LOCALHOST, port + 1)).is_err());
        legs.push(leg);
    }
    assert_eq!(alloc.available(), 0);
}

#[tokio::test]
async fn exhaustion_and_reuse_after_drop() {
    let alloc = PortAllocator::new(free_range(2), LOCALHOST).unwrap();
    let first = alloc.allocate().unwrap();
    let second = alloc.allocate().unwrap();
    assert!(matches!(alloc.allocate(), Err(AllocError::Exhausted { .. })));
    let freed = first.rtp_port();
    drop(first);
    assert_eq!(alloc.available(), 1);
    let again = alloc.allocate().unwrap();
    assert_eq!(again.rtp_port(), freed);
    assert!(matches!(alloc.allocate(), Err(AllocError::Exhausted { .. })));
    drop((second, again));
    assert_eq!(alloc.available(), 2);
}

#[tokio::test]
async fn ports_held_by_others_are_skipped() {
    let range = free_range(3);
    let base = *range.start();
    // Another "process" holds pair 1's RTP port and pair 2's RTCP port.
    let blocker_rtp = StdUdpSocket::bind((LOCALHOST, base)).unwrap();
    let _blocker_rtcp = StdUdpSocket::bind((LOCALHOST, base + 3)).unwrap();
    let alloc = PortAllocator::new(range, LOCALHOST).unwrap();
    let leg = alloc.allocate().unwrap();
    assert_eq!(leg.rtp_port(), base + 4);
    assert!(matches!(alloc.allocate(), Err(AllocError::Exhausted { .. })));
    // Busy pairs stay in the pool and are tried again once free.
    assert_eq!(alloc.available(), 2);
    drop(blocker_rtp);
    assert_eq!(alloc.allocate().unwrap().rtp_port(), base);
}

#[tokio::test]
async fn binding_an_address_of_another_machine_fails() {
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine: bind fails, nothing is sent.
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let alloc = PortAllocator::new(free_range(1), ip).unwrap();
    assert!(matches!(alloc.allocate(), Err(AllocError::Bind { .. })));
    assert_eq!(alloc.available(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_between_tasks() {
    let alloc = PortAllocator::new(free_range(8), LOCALHOST).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let alloc = alloc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let leg = alloc.allocate().unwrap();
                tokio::task::yield_now().await;
                drop(leg);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(alloc.available(), 8);
}

/// The order in which an allocator hands out its pairs, as offsets into `range`.
fn draw_order(range: &std::ops::RangeInclusive<u16>) -> Vec<u16> {
    let alloc = PortAllocator::new(range.clone(), LOCALHOST).unwrap();
    let legs: Vec<_> = (0..alloc.capacity()).map(|_| alloc.allocate().unwrap()).collect();
    legs.iter().map(|l| (l.rtp_port() - range.start()) / 2).collect()
}

#[tokio::test]
async fn ports_are_drawn_at_random_not_in_order() {
    // Two allocators over 8 pairs each: walking in order would give 0, 1, …, 7 both times. Both
    // orders being the same by chance has odds of 1 in 40 320.
    let (first, second) = (draw_order(&free_range(8)), draw_order(&free_range(8)));
    let in_order: Vec<u16> = (0..8).collect();
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, in_order, "every pair handed out once");
    assert!(first != second || first != in_order, "allocators walk the range in order: {first:?} {second:?}");
    assert_ne!(first, second, "two allocators drew the same order");
}

#[tokio::test]
async fn a_random_draw_never_hands_out_a_port_in_use() {
    let range = free_range(8);
    let base = *range.start();
    // Another process holds three pairs (one by its RTP port, two by their RTCP port).
    let held = [base, base + 6, base + 12];
    let _blockers = [
        StdUdpSocket::bind((LOCALHOST, base)).unwrap(),
        StdUdpSocket::bind((LOCALHOST, base + 7)).unwrap(),
        StdUdpSocket::bind((LOCALHOST, base + 13)).unwrap(),
    ];
    let alloc = PortAllocator::new(range, LOCALHOST).unwrap();
    let mut legs = Vec::new();
    for _ in 0..5 {
        let leg = alloc.allocate().unwrap();
        assert!(!held.contains(&leg.rtp_port()), "handed out {} which is in use", leg.rtp_port());
        legs.push(leg);
    }
    let mut ports: Vec<u16> = legs.iter().map(|l| l.rtp_port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 5);
    assert!(matches!(alloc.allocate(), Err(AllocError::Exhausted { .. })));
    assert_eq!(alloc.available(), 3, "busy pairs stay in the pool");
}

#[tokio::test]
async fn a_just_freed_pair_cools_before_it_is_drawn_again() {
    // 8 pairs: 2 cool. Free one pair while 7 others are ready: it is not drawn next.
    let alloc = PortAllocator::new(free_range(8), LOCALHOST).unwrap();
    let leg = alloc.allocate().unwrap();
    let freed = leg.rtp_port();
    drop(leg);
    let next = alloc.allocate().unwrap();
    assert_ne!(next.rtp_port(), freed);
}
