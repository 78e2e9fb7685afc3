//! The nemesis: a seeded schedule of faults, injected one after another while the clients
//! run, each written down with when it began and ended.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::history::{FaultKind, FaultRecord, now};
use super::world::{LEASE_MS, World};

/// One planned fault: after `gap` from the end of the one before, hold `kind` on `node`
/// for `hold`.
#[derive(Clone, Debug)]
pub struct Planned {
    pub gap: Duration,
    pub kind: FaultKind,
    pub node: Option<usize>,
    pub hold: Duration,
}

/// The faults of a schedule of about `run`, from its seed. Partitions only where the world
/// can make them.
pub fn plan(seed: u64, run: Duration, nodes: usize, partitions: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let lease = Duration::from_millis(LEASE_MS);
    let mut kinds = vec![
        FaultKind::KillNode,
        FaultKind::PauseNode { long: false },
        FaultKind::PauseNode { long: true },
        FaultKind::KillDatabase,
        FaultKind::PauseDatabase,
        FaultKind::RestartRedis,
        FaultKind::KillRedisClients,
    ];
    if partitions {
        kinds.push(FaultKind::PartitionNode { long: false });
        kinds.push(FaultKind::PartitionNode { long: true });
    }
    let mut planned = Vec::new();
    let mut at = Duration::ZERO;
    while at < run.saturating_sub(Duration::from_secs(3)) {
        let gap = Duration::from_millis(rng.gen_range(500..2000));
        let kind = *kinds.choose(&mut rng).unwrap();
        let node = match kind {
            FaultKind::KillNode | FaultKind::PauseNode { .. } | FaultKind::PartitionNode { .. } => {
                Some(rng.gen_range(0..nodes))
            }
            FaultKind::KillRedisClients if partitions && rng.gen_bool(0.5) => Some(rng.gen_range(0..nodes)),
            _ => None,
        };
        // Short faults stay well within a quarter lease (no lease may lapse); long ones
        // outlast the lease (every lease of the node lapses, and peers take over).
        let hold = match kind {
            FaultKind::KillNode => Duration::from_millis(rng.gen_range(300..2000)),
            FaultKind::PauseNode { long: false } | FaultKind::PartitionNode { long: false } => lease / 10,
            FaultKind::PauseNode { long: true } | FaultKind::PartitionNode { long: true } => lease * 3 / 2,
            FaultKind::KillDatabase => Duration::from_millis(rng.gen_range(500..3000)),
            FaultKind::PauseDatabase => Duration::from_millis(rng.gen_range(300..3000)),
            FaultKind::RestartRedis => Duration::from_millis(rng.gen_range(0..1500)),
            FaultKind::KillRedisClients => Duration::ZERO,
        };
        at += gap + hold;
        planned.push(Planned { gap, kind, node, hold });
    }
    planned
}

/// Injects the planned faults in order; returns what was done, with times.
pub async fn run(world: &mut World, planned: &[Planned]) -> Vec<FaultRecord> {
    let mut done = Vec::new();
    for fault in planned {
        tokio::time::sleep(fault.gap).await;
        let started = now();
        inject(world, fault).await;
        tokio::time::sleep(fault.hold).await;
        undo(world, fault).await;
        done.push(FaultRecord { kind: fault.kind, node: fault.node, started, ended: now() });
    }
    done
}

async fn inject(world: &mut World, fault: &Planned) {
    match (fault.kind, fault.node) {
        (FaultKind::KillNode, Some(i)) => world.nodes[i].kill(),
        (FaultKind::PauseNode { .. }, Some(i)) => world.nodes[i].pause(),
        (FaultKind::PartitionNode { .. }, Some(i)) => {
            if let Some(net) = &world.net {
                net.partition(i);
            }
        }
        (FaultKind::KillDatabase, _) => world.surreal.kill(),
        (FaultKind::PauseDatabase, _) => world.surreal.pause(),
        (FaultKind::RestartRedis, _) => world.redis.stop(),
        (FaultKind::KillRedisClients, node) => {
            let addr = node.and_then(|i| world.net.as_ref().map(|net| net.node_ip(i)));
            world.redis.kill_clients(addr.as_deref()).await;
        }
        _ => {}
    }
}

async fn undo(world: &mut World, fault: &Planned) {
    match (fault.kind, fault.node) {
        (FaultKind::KillNode, Some(i)) => world.restart_node(i),
        (FaultKind::PauseNode { .. }, Some(i)) => world.nodes[i].resume(),
        (FaultKind::PartitionNode { .. }, Some(i)) => {
            if let Some(net) = &world.net {
                net.heal(i);
            }
        }
        (FaultKind::KillDatabase, _) => world.surreal.restart().await,
        (FaultKind::PauseDatabase, _) => world.surreal.resume(),
        (FaultKind::RestartRedis, _) => world.redis.resume().await,
        _ => {}
    }
}
