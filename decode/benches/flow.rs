//! Instructions reconstructed per second on one core, from a trace of ten
//! million branches: warm (1,000 blocks, each decoded once and then served
//! from the block cache) and cold (every block new). Blocks hold six
//! instructions — the fixture traces here average 6.6 instructions per
//! branch — and, as the worst case, three.
//! Goals: warm >= 100M/s, cold >= 20M/s. Run: `cargo bench -p decode --bench flow`.

use std::time::Instant;

use decode::flow::{Flow, Item};
use decode::kernel::{Branch, Transfer};
use decode::CodeMap;

const BRANCHES: u64 = 10_000_000;
const BASE: u64 = 0x40_0000;

/// `n` blocks in a ring, each `k` instructions: `add eax, 1` (3 bytes)
/// k-1 times, then `jmp rel32` to the next block. Returns the block size.
fn code(n: u64, k: u64) -> (CodeMap, u64) {
    let size = (k - 1) * 3 + 5;
    let mut bytes = Vec::with_capacity((n * size) as usize);
    for i in 0..n {
        let next = if i + 1 == n { 0 } else { i + 1 };
        let rel = (next * size) as i64 - (i * size + size) as i64;
        for _ in 0..k - 1 {
            bytes.extend_from_slice(&[0x83, 0xc0, 0x01]);
        }
        bytes.push(0xe9);
        bytes.extend_from_slice(&(rel as i32).to_le_bytes());
    }
    let mut m = CodeMap::new();
    m.insert(BASE, bytes);
    (m, size)
}

fn branches(blocks: u64, size: u64) -> Vec<Branch> {
    (0..BRANCHES)
        .map(|j| {
            let i = j % blocks;
            let next = (i + 1) % blocks;
            Branch { from: BASE + i * size + size - 5, to: BASE + next * size, transfer: Transfer::Branch }
        })
        .collect()
}

fn run(name: &str, blocks: u64, k: u64) {
    let (code, size) = code(blocks, k);
    let br = branches(blocks, size);
    let mut flow = Flow::new(&code);
    let mut insns = 0u64;
    let mut gaps = 0u64;
    let t0 = Instant::now();
    flow.reconstruct(&br, None, &mut |i| match i {
        Item::Insn(_) => insns += 1,
        _ => gaps += 1,
    });
    let s = t0.elapsed().as_secs_f64();
    assert_eq!(gaps, 0);
    println!(
        "{name:<5} {k}-insn blocks, {BRANCHES} branches, {blocks:>8} distinct ({} decoded): {insns} instructions in {s:.3} s = {:.1}M/s",
        flow.decoded_blocks,
        insns as f64 / s / 1e6
    );
}

fn main() {
    for k in [6, 3] {
        run("warm", 1000, k);
        run("cold", BRANCHES, k);
    }
}
