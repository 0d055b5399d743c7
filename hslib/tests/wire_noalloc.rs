//! The writer's page, encoded-metadata and commit paths do not allocate, so a fork child may
//! run them (with a raw-fd output) in a process that had other threads. Checked with a
//! counting global allocator in a test binary of its own.

use hslib::PAGE_SIZE;
use hslib::wire::{CheckpointWriter, FrameKind, Hello, Metadata, RegionInfo, encode_record};
use std::io::{self, Write};

mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// An output into a preallocated buffer, like a raw `write(2)` to a pipe.
struct Fixed {
    buf: Vec<u8>,
}

impl Write for Fixed {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.buf.capacity() - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn pages_metadata_and_commit_write_without_allocating() {
    let hello = Hello {
        page_size: PAGE_SIZE as u32,
        regions: vec![RegionInfo {
            id: 1,
            base: 1 << 44,
            len: 600 * PAGE_SIZE as u64,
        }],
    };
    let md = Metadata {
        regions: hello.regions.clone(),
        ..Metadata::default()
    };
    let encoded = encode_record(FrameKind::Metadata, &md).expect("encode");
    let data = vec![3u8; 600 * PAGE_SIZE];
    let mut w = CheckpointWriter::new(
        Fixed {
            buf: Vec::with_capacity(4 << 20),
        },
        1,
        1,
    );
    w.hello(&hello).expect("hello");
    w.begin(false).expect("begin");
    let (result, allocated) = counting::counted(|| {
        w.pages(1, 0, &data)?;
        w.encoded_metadata(&encoded)?;
        w.commit()
    });
    let commit = result.expect("checkpoint");
    assert_eq!(commit.pages, 600);
    assert_eq!(allocated, 0, "the child path allocated");
    // And the counter does count: the serde path allocates.
    let (again, allocated) = counting::counted(|| encode_record(FrameKind::Metadata, &md));
    assert!(again.is_ok());
    assert!(allocated > 0, "the counting allocator counts");
}

#[test]
fn a_checkpoint_finished_through_a_raw_fd_writer_allocates_nothing_and_replays() {
    use std::os::fd::AsFd;

    use hslib::replica::Replica;
    use hslib::transport::FdWriter;
    use hslib::wire::page_frames;

    let hello = Hello {
        page_size: PAGE_SIZE as u32,
        regions: vec![RegionInfo {
            id: 1,
            base: 1 << 44,
            len: 300 * PAGE_SIZE as u64,
        }],
    };
    let md = Metadata {
        regions: hello.regions.clone(),
        ..Metadata::default()
    };
    let file = tempfile::tempfile().expect("tempfile");
    // The parent: hello, begin, metadata encoded, all before the "fork".
    let mut parent = CheckpointWriter::new(FdWriter::new(file.as_fd()), 4, 1);
    parent.hello(&hello).expect("hello");
    parent.begin(true).expect("begin");
    let encoded = encode_record(FrameKind::Metadata, &md).expect("encode");
    let data = vec![9u8; 300 * PAGE_SIZE];
    // The child's part, with a copy of the writer state, counted.
    let mut child = CheckpointWriter::with_state(FdWriter::new(file.as_fd()), parent.state());
    let (result, allocated) = counting::counted(|| {
        child.pages(1, 0, &data)?;
        child.encoded_metadata(&encoded)?;
        child.commit()
    });
    result.expect("child checkpoint");
    assert_eq!(allocated, 0, "the fd path allocated");
    let mut st = parent.state();
    st.skip_checkpoint(page_frames(300) + 1);
    assert_eq!(st, child.state());
    // What the child wrote is a complete checkpoint.
    let mut r = Replica::default();
    let mut f = file;
    io::Seek::rewind(&mut f).expect("rewind");
    let end = r.replay(&mut f);
    assert!(end.error.is_none(), "{:?}", end.error);
    assert_eq!(end.commits, 1);
    assert_eq!(r.image().and_then(|i| i.region(1)), Some(data.as_slice()));
}
