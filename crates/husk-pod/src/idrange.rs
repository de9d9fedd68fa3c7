//! `--private-users`: each pod gets its own range of 65536 host uids and gids, allocated under a
//! lock so that no two live pods ever share one.

use std::collections::BTreeSet;
use std::path::Path;

use husk_sys::{Lock, LockKind};
use husk_types::pod::{IdRange, PodManifest};

use crate::error::PodError;
use crate::state::{Phase, Pods};

/// Ids per pod: a full 16-bit range, so images with ids up to 65535 work unchanged.
pub const RANGE_SIZE: u32 = 65536;
/// The first range starts at 2^20, above the ranges /etc/subuid usually hands to users
/// (100000 + 65536·n for the first dozen users).
pub const FIRST_BASE: u32 = 1 << 20;
/// The last range ends below 2^31 (some tools parse ids as signed 32-bit integers).
pub const LAST_BASE: u32 = (1 << 31) - RANGE_SIZE;

/// The lowest base not in `used`.
pub fn lowest_free(used: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_BASE..=LAST_BASE).step_by(RANGE_SIZE as usize).find(|b| !used.contains(b))
}

/// Holds the allocation lock from the choice of a range until the pod manifest naming it is
/// written (drop it then).
pub struct Allocation {
    pub range: IdRange,
    _lock: Lock,
}

/// Chooses a range no live pod uses. Pods that exited (or were never started) keep no claim:
/// a new pod cannot reach their files anyway.
pub fn allocate(pods: &Pods) -> Result<Allocation, PodError> {
    let lock = Lock::acquire(&pods.root().join("id-ranges.lock"), LockKind::Exclusive, || {})?;
    let mut used = BTreeSet::new();
    for uuid in pods.all_uuids() {
        let Ok((phase, dir)) = pods.observe(&uuid) else { continue };
        if !matches!(phase, Phase::Embryo | Phase::Preparing | Phase::Prepared | Phase::Running) {
            continue;
        }
        if let Some(r) = read_range(&dir) {
            used.insert(r.host_base);
        }
    }
    let base = lowest_free(&used).ok_or_else(|| PodError::Invalid {
        uuid: "-".into(),
        why: "every private user range is taken by a live pod".into(),
    })?;
    Ok(Allocation { range: IdRange { host_base: base, count: RANGE_SIZE }, _lock: lock })
}

fn read_range(dir: &Path) -> Option<IdRange> {
    let m: PodManifest = serde_json::from_slice(&std::fs::read(dir.join("pod.json")).ok()?).ok()?;
    m.private_users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_do_not_overlap_and_skip_used_ones() {
        let mut used = BTreeSet::new();
        assert_eq!(lowest_free(&used), Some(FIRST_BASE));
        used.insert(FIRST_BASE);
        used.insert(FIRST_BASE + 2 * RANGE_SIZE);
        assert_eq!(lowest_free(&used), Some(FIRST_BASE + RANGE_SIZE));
        assert!(LAST_BASE as u64 + RANGE_SIZE as u64 <= 1 << 31);
    }
}
