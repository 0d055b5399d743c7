use std::time::Instant;
use hslib::region::{Region, RegionId};
use hslib::track::{self, Backend};
fn main() {
    let size = 4 << 20;
    let mut r = Region::map(RegionId(77), size).unwrap();
    r.as_bytes_mut().fill(1);
    let mut t = track::create(Backend::Uffd).unwrap();
    t.register(&r).unwrap();
    let mut rng = 0x1234567u64;
    let (mut scan, mut ro, mut rw, mut runs_ro) = (vec![], vec![], vec![], vec![]);
    for i in 0..200 {
        let sets = 1024 / 4;
        let mut chosen = vec![];
        for _ in 0..26 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; chosen.push((rng as usize) % sets); }
        chosen.sort(); chosen.dedup();
        for &s in &chosen { for p in 0..4 { r.as_bytes_mut()[(s*4+p)*4096] = i as u8; } }
        let a = Instant::now();
        let d = t.collect_dirty().unwrap();
        scan.push(a.elapsed().as_nanos());
        let _ = d;
        let a = Instant::now();
        unsafe { libc::mprotect(r.base() as *mut _, size, libc::PROT_READ) };
        ro.push(a.elapsed().as_nanos());
        let a = Instant::now();
        unsafe { libc::mprotect(r.base() as *mut _, size, libc::PROT_READ|libc::PROT_WRITE) };
        rw.push(a.elapsed().as_nanos());
        let a = Instant::now();
        for &s in &chosen { unsafe { libc::mprotect((r.base() + s*4*4096) as *mut _, 4*4096, libc::PROT_READ) }; }
        runs_ro.push(a.elapsed().as_nanos());
        unsafe { libc::mprotect(r.base() as *mut _, size, libc::PROT_READ|libc::PROT_WRITE) };
    }
    for (n, mut v) in [("scan", scan), ("ro-whole", ro), ("rw-whole", rw), ("ro-26runs", runs_ro)] {
        v.sort(); println!("{n}: p50 {:.1} us p10 {:.1} p90 {:.1}", v[v.len()/2] as f64/1e3, v[v.len()/10] as f64/1e3, v[v.len()*9/10] as f64/1e3);
    }
}
