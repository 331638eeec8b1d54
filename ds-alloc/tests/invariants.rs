//! Property tests of the allocator over random sequences of operations.

use std::collections::{HashMap, HashSet};

use ds_alloc::{Allocator, BtsHandle, BtsRecord, PebsConfig, PebsFormat, Target, TracerId};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Register { limit_pages: u64 },
    RequestBts { tracer: usize, target: Target, bytes: usize },
    RequestPebs { tracer: usize, target: Target },
    Suspend { handle: usize },
    Resume { handle: usize },
    Release { handle: usize },
    Reset { handle: usize },
    Deliver { cpu: u32, task: u32, count: usize },
    Unregister { tracer: usize },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![(0u32..4).prop_map(Target::Task), (0u32..2).prop_map(Target::Cpu)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..200).prop_map(|limit_pages| Op::Register { limit_pages }),
        (0usize..4, target(), 24usize..200_000).prop_map(|(tracer, target, bytes)| Op::RequestBts {
            tracer,
            target,
            bytes
        }),
        (0usize..4, target()).prop_map(|(tracer, target)| Op::RequestPebs { tracer, target }),
        (0usize..8).prop_map(|handle| Op::Suspend { handle }),
        (0usize..8).prop_map(|handle| Op::Resume { handle }),
        (0usize..8).prop_map(|handle| Op::Release { handle }),
        (0usize..8).prop_map(|handle| Op::Reset { handle }),
        (0u32..2, 0u32..6, 1usize..50).prop_map(|(cpu, task, count)| Op::Deliver { cpu, task, count }),
        (0usize..4).prop_map(|tracer| Op::Unregister { tracer }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn allocator_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let mut a = Allocator::new();
        let mut tracers: Vec<(TracerId, u64)> = Vec::new();
        let mut gone: Vec<TracerId> = Vec::new();
        // Live BTS handles: (tracer, handle, target).
        let mut handles: Vec<(TracerId, BtsHandle, Target)> = Vec::new();
        let mut suspended: HashSet<BtsHandle> = HashSet::new();
        // Record ids that must never show up in a given buffer.
        let mut forbidden: HashMap<BtsHandle, HashSet<u64>> = HashMap::new();
        let mut next_id = 1u64;
        for op in ops {
            match op {
                Op::Register { limit_pages } => {
                    let t = a.register(format!("t{}", tracers.len()), limit_pages * 4096);
                    tracers.push((t, limit_pages));
                }
                Op::RequestBts { tracer, target, bytes } => {
                    if let Some(&(t, _)) = tracers.get(tracer) {
                        if let Ok(h) = a.request_bts(t, target, bytes) {
                            handles.push((t, h, target));
                        }
                    }
                }
                Op::RequestPebs { tracer, target } => {
                    if let Some(&(t, _)) = tracers.get(tracer) {
                        let cfg = PebsConfig { format: PebsFormat::Fmt3, reset: 100, records: 4 };
                        let _ = a.request_pebs(t, target, cfg);
                    }
                }
                Op::Suspend { handle } => {
                    if let Some(&(t, h, _)) = handles.get(handle) {
                        a.suspend_bts(t, h).unwrap();
                        suspended.insert(h);
                    }
                }
                Op::Resume { handle } => {
                    if let Some(&(t, h, _)) = handles.get(handle) {
                        a.resume_bts(t, h).unwrap();
                        suspended.remove(&h);
                    }
                }
                Op::Release { handle } => {
                    if handle < handles.len() {
                        let (t, h, _) = handles.remove(handle);
                        a.release_bts(t, h).unwrap();
                        prop_assert!(a.read_bts(t, h).is_err(), "a released handle stays dead");
                    }
                }
                Op::Reset { handle } => {
                    if let Some(&(t, h, _)) = handles.get(handle) {
                        a.reset_bts(t, h).unwrap();
                    }
                }
                Op::Deliver { cpu, task, count } => {
                    let followed = a.is_followed(task);
                    for _ in 0..count {
                        let id = next_id;
                        next_id += 1;
                        for &(_, h, target) in &handles {
                            let excluded = suspended.contains(&h)
                                || (matches!(target, Target::Cpu(_)) && followed)
                                || target != Target::Task(task) && target != Target::Cpu(cpu);
                            if excluded {
                                forbidden.entry(h).or_default().insert(id);
                            }
                        }
                        a.deliver_bts(cpu, task, BtsRecord::branch(id, task as u64));
                    }
                }
                Op::Unregister { tracer } => {
                    if tracer < tracers.len() {
                        let (t, _) = tracers.remove(tracer);
                        a.unregister(t).unwrap();
                        handles.retain(|(ht, _, _)| *ht != t);
                        gone.push(t);
                    }
                }
            }
            for &(t, limit) in &tracers {
                let charged = a.charged_pages(t).unwrap();
                prop_assert_eq!(charged, a.live_pages(t), "charges equal the live buffers");
                prop_assert!(charged <= limit, "within the limit");
            }
            for &t in &gone {
                prop_assert!(a.charged_pages(t).is_err());
                prop_assert_eq!(a.live_pages(t), 0);
            }
            for target in [Target::Task(0), Target::Task(1), Target::Task(2), Target::Task(3), Target::Cpu(0), Target::Cpu(1)] {
                prop_assert!(a.pebs_owner_count(target) <= 1);
            }
            for &(t, h, _) in &handles {
                if let Some(bad) = forbidden.get(&h) {
                    for r in a.read_bts(t, h).unwrap() {
                        prop_assert!(!bad.contains(&r.from), "record {} reached a buffer it must not", r.from);
                    }
                }
            }
        }
    }
}
