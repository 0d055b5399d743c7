//! Regions in a second process: the same id maps at the same address, so a linked list whose
//! nodes point at each other by absolute address, copied byte for byte, reads back intact.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::{CHILD_ENV, in_child};
use hslib::{Region, RegionError, RegionId, Slot};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A list node: `next` is the absolute address of the next node, 0 at the end.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
struct Node {
    value: u64,
    next: u64,
}

/// The list's entry point: the region's root value.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Debug, Clone, Copy)]
#[repr(C)]
struct Root {
    head: u64,
    len: u64,
}

const ID: RegionId = RegionId(42);
const LEN: usize = 256 * 1024;
const NODES: u64 = 1000;

fn value(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCD
}

#[test]
fn a_linked_list_copied_into_a_second_process_reads_back_intact() {
    let mut r = Region::map(ID, LEN).expect("map");
    let root = r
        .place(Root {
            head: 0,
            len: NODES,
        })
        .expect("root");
    // Nodes are allocated in one order and linked in a scrambled one, so the walk depends
    // on the stored addresses, not on allocation order.
    let slots: Vec<Slot<Node>> = (0..NODES)
        .map(|_| r.alloc(Node { value: 0, next: 0 }).expect("node"))
        .collect();
    let order: Vec<usize> = (0..NODES as usize)
        .map(|i| (i * 7919) % NODES as usize)
        .collect();
    for (k, &i) in order.iter().enumerate() {
        let next = order.get(k + 1).map_or(0, |&j| r.addr_of(slots[j]) as u64);
        *r.get_mut(slots[i]).expect("node") = Node {
            value: value(k as u64),
            next,
        };
    }
    r.get_mut(root).expect("root").head = r.addr_of(slots[order[0]]) as u64;

    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "child_walks_the_copied_list",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("EXPECT_BASE", r.base().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(r.as_bytes()).expect("send the region");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = (0..NODES).fold(0u64, |a, i| a.wrapping_add(value(i)));
    assert!(
        stdout.contains(&format!("walked {NODES} nodes, sum {sum}")),
        "{stdout}"
    );
}

#[test]
#[ignore = "runs only as a child of a_linked_list_copied_into_a_second_process_reads_back_intact"]
fn child_walks_the_copied_list() {
    if !in_child() {
        return;
    }
    let mut r = Region::map(ID, LEN).expect("the same id maps in the second process");
    let want: usize = std::env::var("EXPECT_BASE")
        .expect("EXPECT_BASE")
        .parse()
        .expect("base");
    assert_eq!(r.base(), want);
    std::io::stdin()
        .read_exact(r.as_bytes_mut())
        .expect("receive the region");
    let root = *r.get(r.root::<Root>().expect("the root")).expect("root");
    let (lo, hi) = (r.base(), r.base() + r.len());
    let mut p = root.head as usize;
    let (mut n, mut sum) = (0u64, 0u64);
    while p != 0 {
        assert!(p >= lo && p + size_of::<Node>() <= hi && p.is_multiple_of(align_of::<Node>()));
        // SAFETY: `p` was just checked to lie, aligned, inside this process's mapping of the
        // region, whose bytes are valid `Node`s (every bit pattern is); nothing mutates it.
        let node = unsafe { &*(p as *const Node) };
        assert_eq!(node.value, value(n), "node {n}");
        sum = sum.wrapping_add(node.value);
        n += 1;
        assert!(n <= root.len, "the list does not end");
        p = node.next as usize;
    }
    assert_eq!(n, root.len);
    // The allocator continues where the first process stopped.
    let used = r.allocated().expect("header");
    let extra = r.alloc(7u64).expect("alloc after restore");
    assert!(extra.offset() >= used);
    println!("walked {n} nodes, sum {sum}");
}

#[test]
fn a_taken_address_is_a_clear_error() {
    let r = Region::map(RegionId(43), 8192).expect("map");
    let err = Region::map(RegionId(43), 4096).expect_err("the range is taken");
    assert_eq!(
        err,
        RegionError::AddressTaken {
            id: RegionId(43),
            addr: r.base(),
            len: 4096
        }
    );
    assert!(err.to_string().contains("already in use"), "{err}");
}
