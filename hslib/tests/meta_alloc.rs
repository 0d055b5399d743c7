//! The metadata capture path allocates nothing in steady state: refreshing offsets and
//! encoding the record into a reused buffer, checkpoint after checkpoint. Its own test binary
//! because it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use hslib::meta::{Blobs, FdRegistry, MetadataRef, RegionInfo, SignalRegistry};

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
// Cell, whose access does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

#[test]
fn capture_and_encode_into_a_reused_buffer_allocate_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    let mut fds = FdRegistry::new();
    for i in 0..4 {
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, vec![b'x'; 100]).expect("write");
        let f = File::open(&path).expect("open");
        fds.register_file(f.as_raw_fd(), &format!("f{i}"), i % 2 == 0)
            .expect("register");
        files.push(f);
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    fds.register_socket(l.as_raw_fd(), "listener")
        .expect("register");
    let signals = SignalRegistry::new();
    let mut blobs = Blobs::default();
    blobs.put("cfg", &(1u32, "abc")).expect("put");
    let regions = [RegionInfo {
        id: 1,
        base: 0x2000_0000_0000,
        len: 1 << 20,
    }];
    let mut buf = Vec::new();
    let encode = |fds: &FdRegistry, buf: &mut Vec<u8>| {
        MetadataRef {
            worker: Some("serve"),
            regions: &regions,
            fds: fds.records(),
            signals: signals.records(),
            blobs: blobs.as_map(),
        }
        .encode_into(buf)
        .expect("encode");
    };
    // The first checkpoint sizes the buffer.
    fds.capture().expect("capture");
    encode(&fds, &mut buf);

    let before = allocs();
    for n in 0..50u64 {
        for f in &mut files {
            f.seek(SeekFrom::Start(n)).expect("seek");
        }
        fds.capture().expect("capture");
        encode(&fds, &mut buf);
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "{during} allocations in 50 checkpoints");
    let decoded = hslib::meta::Metadata::decode(&buf).expect("decode");
    let offsets: Vec<u64> = decoded
        .fds
        .iter()
        .filter_map(|r| match &r.kind {
            hslib::meta::FdKind::File(f) => Some(f.offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, [49, 0, 49, 0], "refreshed files only");
}
