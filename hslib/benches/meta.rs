//! Metadata capture costs on the checkpoint path.
//!
//! - `capture_encode/<n>_files_<r>_refreshed`: one [`FdRegistry::capture`] (an `lseek` per
//!   refreshed file) plus encoding the whole record (n files, one listener, two signal
//!   records, a blob) into a reused buffer. The difference between `r = 0` and `r = n` is the
//!   price of refresh.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::fs::File;
use std::hint::black_box;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use criterion::{Criterion, criterion_group, criterion_main};
use hslib::meta::{Blobs, FdRegistry, MetadataRef, RegionInfo, SignalFlags, SignalRecord};

fn capture_encode(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("hslib-meta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let n = 8;
    let files: Vec<File> = (0..n)
        .map(|i| {
            let p = dir.join(format!("file-with-a-realistic-name-{i}.log"));
            std::fs::write(&p, b"data").expect("write");
            File::open(&p).expect("open")
        })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let signals = vec![
        SignalRecord {
            signal: libc::SIGHUP,
            handler: "reload".into(),
            flags: SignalFlags {
                restart: true,
                ..SignalFlags::default()
            },
            mask: vec![],
        },
        SignalRecord {
            signal: libc::SIGTERM,
            handler: "shutdown".into(),
            flags: SignalFlags::default(),
            mask: vec![libc::SIGHUP],
        },
    ];
    let mut blobs = Blobs::default();
    blobs
        .put("config", &("counter-service", 8080u16, 64u32))
        .expect("put");
    let regions = [RegionInfo {
        id: 0,
        base: 0x2000_0000_0000,
        len: 64 << 20,
    }];
    let mut group = c.benchmark_group("capture_encode");
    for refreshed in [0, n] {
        let mut fds = FdRegistry::new();
        for (i, f) in files.iter().enumerate() {
            fds.register_file(f.as_raw_fd(), &format!("file{i}"), i < refreshed)
                .expect("register");
        }
        fds.register_socket(listener.as_raw_fd(), "listener")
            .expect("register");
        let mut buf = Vec::new();
        group.bench_function(format!("{n}_files_{refreshed}_refreshed"), |b| {
            b.iter(|| {
                fds.capture().expect("capture");
                MetadataRef {
                    worker: Some("serve"),
                    regions: &regions,
                    fds: fds.records(),
                    signals: &signals,
                    blobs: blobs.as_map(),
                }
                .encode_into(&mut buf)
                .expect("encode");
                black_box(buf.len())
            });
        });
    }
    group.finish();
    drop(files);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, capture_encode);
criterion_main!(benches);
