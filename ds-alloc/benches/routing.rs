//! Routing throughput of the allocator: records into one tracer's buffer,
//! and fanned out to four tracers of the same task. Records are delivered
//! one call each (as the ptrace recorders do) and in batches of 256 (as a
//! hardware buffer drain does). Run: `cargo bench -p ds-alloc --bench routing`.

use std::hint::black_box;
use std::time::Instant;

use ds_alloc::{Allocator, BtsRecord, Target};

const RECORDS: u64 = 20_000_000;

fn setup(tracers: usize) -> Allocator {
    let mut a = Allocator::new();
    for i in 0..tracers {
        let t = a.register(format!("t{i}"), u64::MAX);
        a.request_bts(t, Target::Task(42), 1 << 20).unwrap();
        // Other tasks and a catch-all, so lookups are not trivially alone.
        a.request_bts(t, Target::Task(1000 + i as u32), 4096).unwrap();
        a.request_bts(t, Target::Cpu(i as u32), 4096).unwrap();
    }
    a
}

fn single(tracers: usize) -> f64 {
    let mut a = setup(tracers);
    let t0 = Instant::now();
    for i in 0..RECORDS {
        black_box(a.deliver_bts(0, 42, BtsRecord::branch(i, i + 5)));
    }
    RECORDS as f64 / t0.elapsed().as_secs_f64()
}

fn batched(tracers: usize) -> f64 {
    let mut a = setup(tracers);
    let batch: Vec<BtsRecord> = (0..256).map(|i| BtsRecord::branch(i, i + 5)).collect();
    let t0 = Instant::now();
    let rounds = RECORDS / 256;
    for _ in 0..rounds {
        black_box(a.deliver_batch(0, 42, black_box(&batch)));
    }
    (rounds * 256) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    println!("{:<40} {:>16}", "routing", "records/s");
    for (name, tracers) in [("one tracer", 1), ("fan-out to four tracers", 4)] {
        println!("{:<40} {:>16.0}", format!("{name}, single"), single(tracers));
        println!("{:<40} {:>16.0}", format!("{name}, batches of 256"), batched(tracers));
    }
}
