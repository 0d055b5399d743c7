//! Test support for the stream tests: a seeded script of checkpoints over a small region
//! table, with the digest of the image after each checkpoint computed on the writer's side
//! (a shadow image patched from the same runs), and the script encoded as bytes with the
//! offset where each frame and each checkpoint ends.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;

use hslib::PAGE_SIZE;
use hslib::replica::Image;
use hslib::wire::{CheckpointWriter, Hello, Metadata, RegionInfo};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A seeded generator (rand's `StdRng`), enough to vary test data by seed.
pub struct Rng(StdRng);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0.random()
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }
}

/// The regions every script uses: three regions of 8, 3 and 300 pages (the last one longer
/// than one page frame carries).
pub fn table() -> Vec<RegionInfo> {
    vec![
        RegionInfo {
            id: 7,
            base: 0x2000_0000_0000,
            len: 8 * PAGE_SIZE as u64,
        },
        RegionInfo {
            id: 2,
            base: 0x2001_0000_0000,
            len: 3 * PAGE_SIZE as u64,
        },
        RegionInfo {
            id: 40,
            base: 0x2002_0000_0000,
            len: 300 * PAGE_SIZE as u64,
        },
    ]
}

/// The hello for [`table`].
pub fn hello() -> Hello {
    Hello {
        page_size: PAGE_SIZE as u32,
        regions: table(),
    }
}

/// One checkpoint of a script.
#[derive(Clone)]
pub struct Cp {
    /// Whether it replaces the image.
    pub full: bool,
    /// `(region, first page, bytes)`.
    pub runs: Vec<(u32, u64, Vec<u8>)>,
    /// Its metadata record.
    pub metadata: Metadata,
    /// The image digest once it is applied, computed on the writer's side.
    pub digest: [u8; 32],
}

/// `n` checkpoints from `seed`: the first full (only some pages sent, the rest zero), the
/// others incremental runs of random pages filled with random bytes; checkpoint `n / 2` full
/// again. Each carries a blob "count" with its index.
pub fn script(seed: u64, n: usize) -> Vec<Cp> {
    let mut rng = Rng::new(seed);
    let table = table();
    let mut shadow = Image::new(&table, u64::MAX).expect("shadow image");
    let mut out = Vec::new();
    for i in 0..n {
        let full = i == 0 || i == n / 2;
        if full {
            shadow = Image::new(&table, u64::MAX).expect("shadow image");
        }
        let mut runs = Vec::new();
        for r in &table {
            let pages = r.len / PAGE_SIZE as u64;
            let mut p = rng.below(pages.min(4));
            while p < pages {
                let count = 1 + rng.below((pages - p).min(if r.id == 40 { 280 } else { 3 }));
                let mut data = vec![0u8; (count as usize) * PAGE_SIZE];
                for chunk in data.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
                }
                shadow
                    .write_pages(r.id, p, &data)
                    .expect("shadow write in range");
                runs.push((r.id, p, data));
                p += count + 1 + rng.below(pages / 2 + 1);
            }
        }
        let mut blobs = BTreeMap::new();
        blobs.insert("count".to_owned(), (i as u64).to_le_bytes().to_vec());
        let metadata = Metadata {
            regions: table.clone(),
            worker: Some("worker".to_owned()),
            blobs,
            ..Metadata::default()
        };
        out.push(Cp {
            full,
            runs,
            metadata,
            digest: shadow.digest(),
        });
    }
    out
}

/// Writes `cps` as checkpoints on `w` (hello first); returns the checkpoint numbers used.
pub fn write_script<W: Write>(w: &mut CheckpointWriter<W>, cps: &[Cp]) -> Vec<u64> {
    w.hello(&hello()).expect("hello");
    cps.iter()
        .map(|cp| {
            w.checkpoint(
                cp.full,
                cp.runs.iter().map(|(r, p, d)| (*r, *p, d.as_slice())),
                &cp.metadata,
            )
            .expect("checkpoint")
            .checkpoint
        })
        .collect()
}

/// A script encoded as one session's bytes.
pub struct Encoded {
    /// The stream.
    pub bytes: Vec<u8>,
    /// End offset of every frame, in order.
    pub frame_ends: Vec<usize>,
    /// End offset of every checkpoint's commit frame, with its digest.
    pub commit_ends: Vec<(usize, [u8; 32])>,
}

impl Encoded {
    /// The digest a replica must hold after reading every frame that ends at or before
    /// `offset` (the last checkpoint whose commit lies wholly within).
    pub fn expected_at(&self, offset: usize) -> Option<[u8; 32]> {
        self.commit_ends
            .iter()
            .take_while(|(end, _)| *end <= offset)
            .last()
            .map(|(_, d)| *d)
    }

    /// Start offset of the frame containing byte `offset`.
    pub fn frame_start(&self, offset: usize) -> usize {
        self.frame_ends
            .iter()
            .take_while(|end| **end <= offset)
            .last()
            .copied()
            .unwrap_or(0)
    }
}

/// Encodes `cps` under `epoch`, recording frame and commit boundaries.
pub fn encode(cps: &[Cp], epoch: u64) -> Encoded {
    let mut w = CheckpointWriter::new(Vec::new(), epoch, 1);
    w.hello(&hello()).expect("hello");
    let mut commit_ends = Vec::new();
    for cp in cps {
        w.checkpoint(
            cp.full,
            cp.runs.iter().map(|(r, p, d)| (*r, *p, d.as_slice())),
            &cp.metadata,
        )
        .expect("checkpoint");
        commit_ends.push((w.get_ref().len(), cp.digest));
    }
    let bytes = w.into_inner();
    let mut frame_ends = Vec::new();
    let mut cur = std::io::Cursor::new(&bytes);
    while hslib::wire::read_frame(&mut cur)
        .expect("valid stream")
        .is_some()
    {
        frame_ends.push(cur.position() as usize);
    }
    Encoded {
        bytes,
        frame_ends,
        commit_ends,
    }
}
