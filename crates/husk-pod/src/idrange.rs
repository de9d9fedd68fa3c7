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

/// The host-wide registry of ranges: one lock and one claim file per range, shared by every data
/// dir on the host (a range must be unique among all live pods, not only those of one `--dir`).
/// /run is per boot, as pods are.
pub const HOST_REGISTRY: &str = husk_types::abi::ID_RANGES_DIR;

/// A claim: which pod (of which data dir) holds a range.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Claim {
    pods_root: std::path::PathBuf,
    uuid: String,
}

/// Holds the allocation lock from the choice of a range until the pod manifest naming it is
/// written (drop it then).
pub struct Allocation {
    pub range: IdRange,
    _lock: Lock,
}

/// Chooses a range no live pod on the host uses, and claims it for pod `uuid`. Pods that exited
/// (or were never started) keep no claim: a new pod cannot reach their files anyway.
pub fn allocate(pods: &Pods, uuid: &str) -> Result<Allocation, PodError> {
    allocate_in(Path::new(HOST_REGISTRY), pods, uuid)
}

fn allocate_in(registry: &Path, pods: &Pods, uuid: &str) -> Result<Allocation, PodError> {
    std::fs::create_dir_all(registry).map_err(|e| PodError::io(registry, "create", e))?;
    let lock = Lock::acquire(&registry.join("lock"), LockKind::Exclusive, || {})?;
    let mut used = BTreeSet::new();
    // Pods of this data dir that predate the host registry.
    for u in pods.all_uuids() {
        if let (true, Some(r)) = (is_live(pods, &u), pods_dir_range(pods, &u)) {
            used.insert(r.host_base);
        }
    }
    let entries = std::fs::read_dir(registry).map_err(|e| PodError::io(registry, "list", e))?;
    for e in entries.flatten() {
        let Some(base) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let claim: Option<Claim> = std::fs::read(e.path()).ok().and_then(|d| serde_json::from_slice(&d).ok());
        let live = claim.is_some_and(|c| {
            let other = if c.pods_root == pods.root() { Some(pods.clone()) } else { Pods::existing(&c.pods_root) };
            other.is_some_and(|o| is_live(&o, &c.uuid))
        });
        if live {
            used.insert(base);
        } else {
            // Its pod is gone or exited: the range is free again.
            let _ = std::fs::remove_file(e.path());
        }
    }
    let base = lowest_free(&used).ok_or_else(|| PodError::Invalid {
        uuid: uuid.into(),
        why: "every private user range is taken by a live pod".into(),
    })?;
    let claim = serde_json::to_vec(&Claim { pods_root: pods.root().to_path_buf(), uuid: uuid.to_string() })
        .expect("serializable");
    let path = registry.join(base.to_string());
    husk_sys::atomic_write_volatile(&path, &claim, 0o644).map_err(|e| PodError::io(&path, "write", e))?;
    Ok(Allocation { range: IdRange { host_base: base, count: RANGE_SIZE }, _lock: lock })
}

fn is_live(pods: &Pods, uuid: &str) -> bool {
    pods.observe(uuid)
        .is_ok_and(|(phase, _)| matches!(phase, Phase::Embryo | Phase::Preparing | Phase::Prepared | Phase::Running))
}

fn pods_dir_range(pods: &Pods, uuid: &str) -> Option<IdRange> {
    let (_, dir) = pods.observe(uuid).ok()?;
    read_range(&dir)
}

fn read_range(dir: &Path) -> Option<IdRange> {
    let m: PodManifest =
        serde_json::from_slice(&std::fs::read(husk_types::abi::PodDir::new(dir).manifest()).ok()?).ok()?;
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

    /// Two data dirs once handed the same range to two live pods.
    #[test]
    fn private_user_ranges_are_unique_across_data_dirs() {
        let reg = tempfile::tempdir().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (pods_a, pods_b) = (Pods::open(a.path()).unwrap(), Pods::open(b.path()).unwrap());
        let pa = pods_a.create().unwrap();
        let ra = allocate_in(reg.path(), &pods_a, &pa.uuid).unwrap().range;
        let pb = pods_b.create().unwrap();
        let rb = allocate_in(reg.path(), &pods_b, &pb.uuid).unwrap().range;
        assert_ne!(ra.host_base, rb.host_base, "a live pod of another data dir holds {}", ra.host_base);
        // Once a's pod is gone, its range is handed out again.
        pods_a.remove_locked(pa, &|_| Ok(())).unwrap();
        let pc = pods_b.create().unwrap();
        let rc = allocate_in(reg.path(), &pods_b, &pc.uuid).unwrap().range;
        assert_eq!(rc.host_base, ra.host_base);
        assert!(!reg.path().join(ra.host_base.to_string()).exists() || rc.host_base == ra.host_base);
        drop(pb);
    }
}
