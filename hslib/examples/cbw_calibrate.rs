//! Prints the adaptive cost model's calibration for one populated 4 MiB region.
use hslib::region::{Region, RegionId};
use hslib::snapshot::CostModel;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut r = Region::map(RegionId(78), 4 << 20)?;
    r.as_bytes_mut().fill(1);
    for _ in 0..3 {
        let m = CostModel::calibrate(std::slice::from_ref(&r))?;
        println!(
            "copy {:.4} ns/byte (10% of 4 MiB: {:.1} us)  fork {:.1} us  cbw {:.1} us",
            m.copy_ns_per_byte,
            m.copy_cost(419_430) / 1e3,
            m.fork_ns / 1e3,
            m.cbw_ns / 1e3
        );
    }
    Ok(())
}
