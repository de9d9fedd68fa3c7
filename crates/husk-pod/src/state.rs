//! Pod phases: one `observe` function, transitions that consume a held lock.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use husk_sys::{Lock, LockKind};
use husk_types::abi::PodDir;
use husk_types::pod::{AppStatus, PodManifest, Stage1State};
use husk_types::Digest;
use serde::Serialize;

use crate::error::PodError;

/// Names a pod directory has in `embryo/` between its creation and its lock (see [`Pods::create`]).
pub const STAGING_PREFIX: &str = ".new-";

/// How [`Pods::create`]'s one try ended badly: lost to a `gc` that removed the staging
/// directory before it was locked (try again), or failed.
enum CreateRace {
    Lost(PodError),
    Failed(PodError),
}

/// The directory a pod is in: with whether its lock is held, this is its phase. The only place
/// the directory names are spelled, and the table of the moves between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseDir {
    Embryo,
    Prepare,
    Prepared,
    Run,
    ExitedGarbage,
    Garbage,
}

impl PhaseDir {
    /// In lifecycle order.
    pub const ALL: [PhaseDir; 6] = [
        PhaseDir::Embryo,
        PhaseDir::Prepare,
        PhaseDir::Prepared,
        PhaseDir::Run,
        PhaseDir::ExitedGarbage,
        PhaseDir::Garbage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PhaseDir::Embryo => "embryo",
            PhaseDir::Prepare => "prepare",
            PhaseDir::Prepared => "prepared",
            PhaseDir::Run => "run",
            PhaseDir::ExitedGarbage => "exited-garbage",
            PhaseDir::Garbage => "garbage",
        }
    }

    /// The legal moves (rkt's `ToPrepared`/`ToRun` guards): a pod only ever moves forward, and
    /// any pod its holder gives up on may go to garbage.
    pub fn may_move_to(self, to: PhaseDir) -> bool {
        use PhaseDir::*;
        matches!(
            (self, to),
            (Embryo, Prepare)
                | (Prepare, Prepared | Run)
                | (Prepared, Run)
                | (Run, ExitedGarbage)
                | (Embryo | Prepare | Prepared | Run | ExitedGarbage, Garbage)
        )
    }

    /// The phase a pod in this directory has, given whether its lock is held.
    pub fn phase(self, locked: bool) -> Phase {
        match (self, locked) {
            (PhaseDir::Embryo, true) => Phase::Embryo,
            (PhaseDir::Embryo | PhaseDir::Prepare, false) => Phase::AbortedPrepare,
            (PhaseDir::Prepare, true) => Phase::Preparing,
            (PhaseDir::Prepared, _) => Phase::Prepared,
            (PhaseDir::Run, true) => Phase::Running,
            (PhaseDir::Run, false) => Phase::Exited,
            (PhaseDir::ExitedGarbage, _) => Phase::ExitedGarbage,
            (PhaseDir::Garbage, _) => Phase::Garbage,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Being created (embryo, locked).
    Embryo,
    /// Creation or preparation was interrupted (embryo or prepare, unlocked).
    AbortedPrepare,
    Preparing,
    Prepared,
    Running,
    Exited,
    ExitedGarbage,
    Garbage,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Embryo => "embryo",
            Phase::AbortedPrepare => "aborted-prepare",
            Phase::Preparing => "preparing",
            Phase::Prepared => "prepared",
            Phase::Running => "running",
            Phase::Exited => "exited",
            Phase::ExitedGarbage => "exited-garbage",
            Phase::Garbage => "garbage",
        }
    }
}

/// The pods directory of a data dir.
#[derive(Debug, Clone)]
pub struct Pods {
    root: PathBuf,
}

/// A pod whose exclusive lock this process holds, and the directory it is in.
#[derive(Debug)]
pub struct LockedPod {
    pub uuid: String,
    pub dir: PathBuf,
    pub at: PhaseDir,
    pub lock: Lock,
}

/// Everything `list` and `status` show.
#[derive(Debug, Clone, Serialize)]
pub struct PodInfo {
    pub uuid: String,
    pub phase: Phase,
    #[serde(skip)]
    pub dir: PathBuf,
    pub manifest: Option<PodManifest>,
    pub stage1: Option<Stage1State>,
    pub apps: Vec<(String, Option<AppStatus>)>,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    pub started: Option<chrono::DateTime<chrono::Utc>>,
    pub exited: Option<chrono::DateTime<chrono::Utc>>,
}

impl PodInfo {
    /// The pod's exit status: that of the app that failed first (the others may then have been
    /// stopped by the pod), else 0; None while running or unknown.
    pub fn exit_status(&self) -> Option<i32> {
        if self.phase != Phase::Exited && self.phase != Phase::ExitedGarbage {
            return None;
        }
        let mut statuses: Vec<&AppStatus> = self.apps.iter().filter_map(|(_, s)| s.as_ref()).collect();
        if statuses.len() != self.apps.len() {
            return None;
        }
        statuses.sort_by_key(|s| s.finished);
        let ended: Vec<i32> = statuses.iter().map(|s| s.shell_status()).collect();
        let policy = self.manifest.as_ref().map(|m| m.exit_policy).unwrap_or_default();
        Some(policy.pod_status(&ended))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, PodError> {
    match fs::read(p) {
        Ok(d) => serde_json::from_slice(&d)
            .map(Some)
            .map_err(|e| PodError::Corrupt { path: p.to_path_buf(), why: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PodError::io(p, "read", e)),
    }
}

impl Pods {
    pub fn open(data_dir: &Path) -> Result<Pods, PodError> {
        let root = data_dir.join("pods");
        for d in PhaseDir::ALL {
            let p = root.join(d.name());
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(|e| PodError::io(&p, "create", e))?;
            }
        }
        Ok(Pods { root })
    }

    /// The pods directory of another data dir, if it exists (never creates anything).
    pub fn existing(root: &Path) -> Option<Pods> {
        root.join(PhaseDir::Run.name()).is_dir().then(|| Pods { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn phase_dir(&self, d: PhaseDir) -> PathBuf {
        self.root.join(d.name())
    }

    /// Creates a new pod in `embryo`, locked, then moves it to `prepare`.
    ///
    /// The directory is made and locked under a staging name (`embryo/.new-<uuid>`, which no
    /// command takes for a pod) and only then renamed to its UUID: a `gc` running beside us can
    /// never see the new pod unlocked and collect it as an aborted one. `gc` removes a staging
    /// directory it can lock (its creator died before locking it, or has not locked it yet); the
    /// creator that loses that race starts over with a new UUID.
    pub fn create(&self) -> Result<LockedPod, PodError> {
        let mut last = None;
        for _ in 0..8 {
            match self.try_create() {
                Ok(pod) => return Ok(pod),
                Err(CreateRace::Lost(e)) => last = Some(e),
                Err(CreateRace::Failed(e)) => return Err(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    fn try_create(&self) -> Result<LockedPod, CreateRace> {
        let mut random = [0u8; 16];
        husk_sys::random_bytes(&mut random).map_err(|e| {
            CreateRace::Failed(PodError::io(&self.phase_dir(PhaseDir::Embryo), "draw a pod UUID for", e))
        })?;
        let uuid = uuid::Builder::from_random_bytes(random).into_uuid().to_string();
        let staging = self.phase_dir(PhaseDir::Embryo).join(format!("{STAGING_PREFIX}{uuid}"));
        fs::create_dir(&staging).map_err(|e| CreateRace::Failed(PodError::io(&staging, "create pod directory", e)))?;
        let lost = |e: PodError| CreateRace::Lost(e);
        let lock = match Lock::try_lock_dir(&staging, LockKind::Exclusive) {
            Ok(Some(l)) if l.still_at(&staging) => l,
            Ok(_) => return Err(lost(PodError::Busy { uuid })),
            Err(e) => return Err(lost(e.into())),
        };
        let holder = PodDir::new(&staging).lock_holder();
        // Plainly written: nobody reads the staging dir, and the rename below publishes it whole.
        fs::write(&holder, format!("{}\n", std::process::id())).map_err(|e| lost(PodError::io(&holder, "write", e)))?;
        let dir = self.phase_dir(PhaseDir::Embryo).join(&uuid);
        fs::rename(&staging, &dir).map_err(|e| lost(PodError::io(&dir, "create pod directory", e)))?;
        let mut pod = LockedPod { uuid, dir, at: PhaseDir::Embryo, lock };
        self.transition(&mut pod, PhaseDir::Prepare).map_err(CreateRace::Failed)?;
        Ok(pod)
    }

    /// Renames a locked pod into another phase directory. Only a move to `prepared` is made
    /// durable: a pod in any other phase is garbage after a reboot anyway, and `gc` finds it in
    /// whichever directory the crash left it.
    pub fn transition(&self, pod: &mut LockedPod, to: PhaseDir) -> Result<(), PodError> {
        if !pod.at.may_move_to(to) {
            return Err(PodError::IllegalMove { uuid: pod.uuid.clone(), from: pod.at.name(), to: to.name() });
        }
        let dest = self.phase_dir(to).join(&pod.uuid);
        if to == PhaseDir::Prepared {
            // A prepared pod has no lock holder until it runs, and then its stage1 writes the
            // file anew: replacing an old one by a rename would make ext4 write the new one out
            // at once and free the old one's blocks (a discard, waited for, on a `discard` mount),
            // 0.4 ms of the run's start here.
            let holder = PodDir::new(&pod.dir).lock_holder();
            match fs::remove_file(&holder) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(PodError::io(&holder, "remove", e)),
                _ => {}
            }
            fs::File::open(PodDir::new(&pod.dir).manifest())
                .and_then(|f| f.sync_all())
                .map_err(|e| PodError::io(&pod.dir, "sync", e))?;
        }
        fs::rename(&pod.dir, &dest).map_err(|e| PodError::io(&dest, "move pod", e))?;
        if to == PhaseDir::Prepared {
            husk_sys::fsync_dir(&self.phase_dir(to)).map_err(|e| PodError::io(&dest, "sync", e))?;
        }
        pod.dir = dest;
        pod.at = to;
        Ok(())
    }

    /// Which phase directory holds `uuid`, if any.
    fn locate(&self, uuid: &str) -> Option<(PhaseDir, PathBuf)> {
        PhaseDir::ALL.iter().map(|d| (*d, self.phase_dir(*d).join(uuid))).find(|(_, p)| p.is_dir())
    }

    /// Observes a pod's phase: the directory holding it and whether its lock is held.
    pub fn observe(&self, uuid: &str) -> Result<(Phase, PathBuf), PodError> {
        self.observe_at(uuid).map(|(phase, _, dir)| (phase, dir))
    }

    /// [`Pods::observe`], with the directory the pod was found in.
    fn observe_at(&self, uuid: &str) -> Result<(Phase, PhaseDir, PathBuf), PodError> {
        // A pod may move between our look and our lock; look again when it did.
        for _ in 0..5 {
            let Some((dir_name, dir)) = self.locate(uuid) else {
                return Err(PodError::Unknown(uuid.to_string()));
            };
            let locked = match Lock::try_lock_dir(&dir, LockKind::Shared) {
                Ok(Some(l)) => {
                    if !l.still_at(&dir) {
                        continue;
                    }
                    false
                }
                Ok(None) => true,
                Err(husk_sys::LockError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            return Ok((dir_name.phase(locked), dir_name, dir));
        }
        Err(PodError::Unknown(uuid.to_string()))
    }

    pub fn all_uuids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in PhaseDir::ALL {
            if let Ok(rd) = fs::read_dir(self.phase_dir(d)) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if uuid::Uuid::parse_str(&n).is_ok() && !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    /// Resolves a unique UUID prefix.
    pub fn resolve(&self, prefix: &str) -> Result<String, PodError> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Err(PodError::Unknown(prefix.to_string()));
        }
        // A whole UUID is a prefix of itself alone: look it up instead of listing every pod (a
        // data dir may hold thousands, and scripts pass whole UUIDs).
        if prefix.len() == 36 && uuid::Uuid::parse_str(prefix).is_ok() && self.locate(prefix).is_some() {
            return Ok(prefix.to_string());
        }
        let matches: Vec<String> = self.all_uuids().into_iter().filter(|u| u.starts_with(prefix)).collect();
        match matches.len() {
            0 => Err(PodError::Unknown(prefix.to_string())),
            1 => Ok(matches.into_iter().next().unwrap()),
            n => Err(PodError::Ambiguous {
                prefix: prefix.to_string(),
                count: n,
                examples: matches.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    pub fn info(&self, uuid: &str) -> Result<PodInfo, PodError> {
        let (phase, dir) = self.observe(uuid)?;
        let pd = PodDir::new(&dir);
        let manifest: Option<PodManifest> = read_json(&pd.manifest())?;
        let stage1: Option<Stage1State> = read_json(&pd.stage1_state())?;
        let mut apps = Vec::new();
        let mut exited = None;
        if let Some(m) = &manifest {
            for a in &m.apps {
                let st: Option<AppStatus> = read_json(&pd.app_status(&a.name))?;
                if let Some(s) = &st {
                    exited = exited.max(Some(s.finished));
                }
                apps.push((a.name.clone(), st));
            }
        }
        if matches!(phase, Phase::Exited | Phase::ExitedGarbage) && exited.is_none() {
            // Killed without recording statuses: the lock's release is all we know; the pod
            // dir's last change is the best time we have.
            exited = fs::metadata(&dir).and_then(|m| m.modified()).ok().map(Into::into);
        }
        Ok(PodInfo {
            uuid: uuid.to_string(),
            phase,
            created: manifest.as_ref().map(|m| m.created),
            started: stage1.as_ref().map(|s| s.started),
            exited: if matches!(phase, Phase::Exited | Phase::ExitedGarbage) { exited } else { None },
            dir,
            manifest,
            stage1,
            apps,
        })
    }

    pub fn list(&self) -> Result<Vec<PodInfo>, PodError> {
        let mut out = Vec::new();
        for u in self.all_uuids() {
            match self.info(&u) {
                Ok(i) => out.push(i),
                Err(PodError::Unknown(_)) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|a| a.created);
        Ok(out)
    }

    /// Pods (any phase but garbage) whose manifest uses image `id`.
    pub fn pods_using_image(&self, id: &Digest) -> Vec<String> {
        let mut out = Vec::new();
        for d in [PhaseDir::Embryo, PhaseDir::Prepare, PhaseDir::Prepared, PhaseDir::Run] {
            if let Ok(rd) = fs::read_dir(self.phase_dir(d)) {
                for e in rd.flatten() {
                    let m: Option<PodManifest> = read_json(&PodDir::new(e.path()).manifest()).ok().flatten();
                    match m {
                        Some(m) if m.apps.iter().any(|a| &a.image.id == id) => {
                            out.push(e.file_name().to_string_lossy().into_owned())
                        }
                        // A pod still being prepared has no manifest yet: be safe.
                        None if matches!(d, PhaseDir::Embryo | PhaseDir::Prepare)
                            && Lock::try_lock_dir(&e.path(), LockKind::Shared).ok().flatten().is_none() =>
                        {
                            out.push(e.file_name().to_string_lossy().into_owned());
                        }
                        _ => {}
                    }
                }
            }
        }
        out
    }

    /// Takes a pod's lock exclusively, without waiting: fails if the pod runs or is being worked on.
    pub fn lock_pod(&self, uuid: &str) -> Result<LockedPod, PodError> {
        for _ in 0..5 {
            let (phase, at, dir) = self.observe_at(uuid)?;
            let lock = match Lock::try_lock_dir(&dir, LockKind::Exclusive) {
                Ok(l) => l,
                Err(husk_sys::LockError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match lock {
                Some(lock) if lock.still_at(&dir) => return Ok(LockedPod { uuid: uuid.to_string(), dir, at, lock }),
                Some(_) => continue,
                // A pod in run/ whose lock is held by anything but its own supervisor is an
                // exited pod another command (a parallel rm or gc) is working on.
                None if phase == Phase::Running && supervisor_alive(&dir) != Some(false) => {
                    return Err(PodError::WrongPhase {
                        uuid: uuid.to_string(),
                        phase: phase.as_str().to_string(),
                        why: "it must be stopped first".into(),
                    });
                }
                None => {
                    return Err(PodError::Busy { uuid: uuid.to_string() });
                }
            }
        }
        Err(PodError::Unknown(uuid.to_string()))
    }

    /// Removes a locked pod: stage1 cleanup (`gc_hook`), then `garbage/`, then gone.
    pub fn remove_locked(
        &self,
        mut pod: LockedPod,
        gc_hook: &dyn Fn(&Path) -> Result<(), PodError>,
    ) -> Result<(), PodError> {
        gc_hook(&pod.dir)?;
        if pod.at != PhaseDir::Garbage {
            self.transition(&mut pod, PhaseDir::Garbage)?;
        }
        fs::remove_dir_all(&pod.dir).map_err(|e| PodError::io(&pod.dir, "remove pod directory", e))?;
        Ok(())
    }

    /// Collects garbage: exited pods move to exited-garbage (after stage1 cleanup); those older
    /// than `grace` and aborted ones are removed; prepared pods older than `expire_prepared` too.
    pub fn gc(
        &self,
        grace: Duration,
        expire_prepared: Duration,
        gc_hook: &dyn Fn(&Path) -> Result<(), PodError>,
    ) -> Result<GcReport, PodError> {
        let mut report = GcReport::default();
        self.remove_strays();
        for uuid in self.all_uuids() {
            let Ok((phase, dir)) = self.observe(&uuid) else { continue };
            let age = |p: &Path| {
                fs::metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default()
            };
            let result = match phase {
                Phase::Exited => self.lock_pod(&uuid).and_then(|mut pod| {
                    gc_hook(&pod.dir)?;
                    self.transition(&mut pod, PhaseDir::ExitedGarbage)?;
                    // The move marks the start of the grace period.
                    let _ = fs::File::create(PodDir::new(&pod.dir).gc_marked());
                    report.marked.push(uuid.clone());
                    if grace.is_zero() {
                        // stage1's cleanup has just run under this same lock: nothing can have
                        // been created since, so it is not run a second time.
                        self.remove_locked(pod, &|_| Ok(()))?;
                        report.removed.push(uuid.clone());
                    }
                    Ok(())
                }),
                Phase::ExitedGarbage if age(&PodDir::new(&dir).gc_marked()) >= grace => {
                    self.lock_pod(&uuid).and_then(|pod| {
                        self.remove_locked(pod, gc_hook)?;
                        report.removed.push(uuid.clone());
                        Ok(())
                    })
                }
                Phase::AbortedPrepare | Phase::Garbage => self.lock_pod(&uuid).and_then(|pod| {
                    self.remove_locked(pod, gc_hook)?;
                    report.removed.push(uuid.clone());
                    Ok(())
                }),
                Phase::Prepared if age(&dir) >= expire_prepared => self.lock_pod(&uuid).and_then(|pod| {
                    self.remove_locked(pod, gc_hook)?;
                    report.removed.push(uuid.clone());
                    Ok(())
                }),
                _ => Ok(()),
            };
            if let Err(e) = result {
                // One stuck pod must not stop the collection of the others.
                report.failed.push((uuid, e.to_string()));
            }
        }
        Ok(report)
    }
}

impl Pods {
    /// What no pod owns: staging directories nobody holds locked, and the
    /// empty lock files older husk versions could leave where a pod directory had just been
    /// renamed away.
    fn remove_strays(&self) {
        for d in PhaseDir::ALL {
            let Ok(rd) = fs::read_dir(self.phase_dir(d)) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(meta) = e.path().symlink_metadata() else { continue };
                let is_pod_name = uuid::Uuid::parse_str(&name).is_ok();
                if is_pod_name && meta.is_file() && meta.len() == 0 {
                    let _ = fs::remove_file(e.path());
                } else if d == PhaseDir::Embryo && name.starts_with(STAGING_PREFIX) && meta.is_dir() {
                    // Unlocked: its creator died, or will find it gone and start over.
                    if let Ok(Some(_l)) = Lock::try_lock_dir(&e.path(), LockKind::Exclusive) {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    }
}

/// The process holding a pod's lock while it is prepared or started (from
/// [`PodDir::lock_holder`]), if it is alive and really holds the pod dir open.
pub fn lock_holder(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(PodDir::new(dir).lock_holder()).ok()?.trim().parse().ok()?;
    husk_sys::proc::holds_dir_open(pid, dir).then_some(pid)
}

/// Whether the supervisor named in a pod's `stage1.json` is alive and still holds the pod dir
/// open (a recycled pid is not it). None when the pod has no stage1 state yet.
pub fn supervisor_alive(dir: &Path) -> Option<bool> {
    let st: Stage1State = read_json(&PodDir::new(dir).stage1_state()).ok().flatten()?;
    Some(husk_sys::proc::holds_dir_open(st.supervisor_pid, dir))
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub marked: Vec<String>,
    pub removed: Vec<String>,
    pub failed: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_directory_and_lock() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let mut pod = pods.create().unwrap();
        let uuid = pod.uuid.clone();
        assert_eq!(pods.observe(&uuid).unwrap().0, Phase::Preparing);
        pods.transition(&mut pod, PhaseDir::Run).unwrap();
        assert_eq!(pods.observe(&uuid).unwrap().0, Phase::Running);
        drop(pod); // the supervisor died
        assert_eq!(pods.observe(&uuid).unwrap().0, Phase::Exited);
    }

    #[test]
    fn interrupted_prepare_is_aborted_and_collected() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let pod = pods.create().unwrap();
        let uuid = pod.uuid.clone();
        drop(pod); // kill -9 during prepare
        assert_eq!(pods.observe(&uuid).unwrap().0, Phase::AbortedPrepare);
        let r = pods.gc(Duration::ZERO, Duration::from_secs(3600), &|_| Ok(())).unwrap();
        assert_eq!(r.removed, vec![uuid.clone()]);
        assert!(matches!(pods.observe(&uuid), Err(PodError::Unknown(_))));
    }

    #[test]
    fn running_pods_are_not_collected_or_removed() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let mut pod = pods.create().unwrap();
        pods.transition(&mut pod, PhaseDir::Run).unwrap();
        let r = pods.gc(Duration::ZERO, Duration::ZERO, &|_| Ok(())).unwrap();
        assert!(r.removed.is_empty());
        assert!(matches!(pods.lock_pod(&pod.uuid), Err(PodError::WrongPhase { .. })));
    }

    #[test]
    fn exited_pods_wait_out_the_grace_period() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let mut pod = pods.create().unwrap();
        pods.transition(&mut pod, PhaseDir::Run).unwrap();
        let uuid = pod.uuid.clone();
        drop(pod);
        let r = pods.gc(Duration::from_secs(3600), Duration::ZERO, &|_| Ok(())).unwrap();
        assert_eq!(r.marked, vec![uuid.clone()]);
        assert!(r.removed.is_empty());
        assert_eq!(pods.observe(&uuid).unwrap().0, Phase::ExitedGarbage);
        let r = pods.gc(Duration::ZERO, Duration::ZERO, &|_| Ok(())).unwrap();
        assert_eq!(r.removed, vec![uuid]);
    }

    /// stage1's cleanup is an exec per pod: with no grace period it runs once per removed pod,
    /// not once to mark it and again to remove it.
    #[test]
    fn stage1_cleanup_runs_once_per_collected_pod() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        for _ in 0..3 {
            let mut pod = pods.create().unwrap();
            pods.transition(&mut pod, PhaseDir::Run).unwrap();
        }
        let calls = std::cell::Cell::new(0);
        let r = pods
            .gc(Duration::ZERO, Duration::ZERO, &|_| {
                calls.set(calls.get() + 1);
                Ok(())
            })
            .unwrap();
        assert_eq!(r.removed.len(), 3);
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn gc_removes_unlocked_staging_dirs_and_stray_lock_files_only() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let embryo = pods.phase_dir(PhaseDir::Embryo);
        let dead = embryo.join(format!("{STAGING_PREFIX}00000000-0000-4000-8000-000000000001"));
        let live = embryo.join(format!("{STAGING_PREFIX}00000000-0000-4000-8000-000000000002"));
        fs::create_dir(&dead).unwrap();
        fs::create_dir(&live).unwrap();
        let _held = Lock::try_lock_dir(&live, LockKind::Exclusive).unwrap().unwrap();
        // What an older husk's directory lock left where a pod had just been renamed from.
        let stray = pods.phase_dir(PhaseDir::Garbage).join("00000000-0000-4000-8000-000000000003");
        fs::write(&stray, b"").unwrap();
        pods.gc(Duration::ZERO, Duration::ZERO, &|_| Ok(())).unwrap();
        assert!(!dead.exists() && !stray.exists());
        assert!(live.exists(), "a staging dir its creator holds was removed");
        // A pod created beside all this is complete and locked.
        let pod = pods.create().unwrap();
        assert_eq!(pods.observe(&pod.uuid).unwrap().0, Phase::Preparing);
    }

    /// Every pair of directories: exactly the documented moves are allowed.
    #[test]
    fn the_transition_table_allows_only_forward_moves() {
        use PhaseDir::*;
        let allowed = [
            (Embryo, Prepare),
            (Embryo, Garbage),
            (Prepare, Prepared),
            (Prepare, Run),
            (Prepare, Garbage),
            (Prepared, Run),
            (Prepared, Garbage),
            (Run, ExitedGarbage),
            (Run, Garbage),
            (ExitedGarbage, Garbage),
        ];
        for from in PhaseDir::ALL {
            for to in PhaseDir::ALL {
                assert_eq!(from.may_move_to(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn a_prepared_pod_has_no_lock_holder() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let mut pod = pods.create().unwrap();
        assert!(PodDir::new(&pod.dir).lock_holder().exists());
        fs::write(PodDir::new(&pod.dir).manifest(), "{}").unwrap();
        pods.transition(&mut pod, PhaseDir::Prepared).unwrap();
        assert!(!PodDir::new(&pod.dir).lock_holder().exists());
        assert_eq!(lock_holder(&pod.dir), None);
    }

    #[test]
    fn an_illegal_move_is_refused_and_leaves_the_pod_where_it_was() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let mut pod = pods.create().unwrap();
        pods.transition(&mut pod, PhaseDir::Run).unwrap();
        let err = pods.transition(&mut pod, PhaseDir::Prepared).unwrap_err();
        assert!(matches!(err, PodError::IllegalMove { from: "run", to: "prepared", .. }), "{err}");
        assert_eq!(pods.observe(&pod.uuid).unwrap().0, Phase::Running);
        assert_eq!(pod.at, PhaseDir::Run);
    }

    #[test]
    fn phases_of_every_directory_and_lock_state() {
        use PhaseDir::*;
        let cases = [
            (Embryo, true, Phase::Embryo),
            (Embryo, false, Phase::AbortedPrepare),
            (Prepare, true, Phase::Preparing),
            (Prepare, false, Phase::AbortedPrepare),
            (Prepared, false, Phase::Prepared),
            (Run, true, Phase::Running),
            (Run, false, Phase::Exited),
            (ExitedGarbage, false, Phase::ExitedGarbage),
            (Garbage, true, Phase::Garbage),
        ];
        for (d, locked, want) in cases {
            assert_eq!(d.phase(locked), want, "{d:?} locked={locked}");
        }
    }

    #[test]
    fn uuid_prefixes() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let a = pods.create().unwrap();
        let b = pods.create().unwrap();
        assert_eq!(pods.resolve(&a.uuid[..8]).unwrap(), a.uuid);
        assert_eq!(pods.resolve(&b.uuid).unwrap(), b.uuid);
        assert!(matches!(pods.resolve("zzzz"), Err(PodError::Unknown(_))));
        assert!(matches!(pods.resolve(""), Err(PodError::Unknown(_))));
        // Both UUIDs match the empty-after-dash prefix of neither; an 8-hex common prefix is
        // unlikely, so build an ambiguous case from two fake directories.
        fs::create_dir(pods.phase_dir(PhaseDir::Prepared).join("aaaaaaaa-0000-4000-8000-000000000001")).unwrap();
        fs::create_dir(pods.phase_dir(PhaseDir::Prepared).join("aaaaaaaa-0000-4000-8000-000000000002")).unwrap();
        assert!(matches!(pods.resolve("aaaa"), Err(PodError::Ambiguous { count: 2, .. })));
        // Whole UUIDs, looked up directly: one that exists in any phase dir, one that does not,
        // one with a character too many, and an upper-case one (names are lower-case).
        let whole = "aaaaaaaa-0000-4000-8000-000000000002";
        assert_eq!(pods.resolve(whole).unwrap(), whole);
        assert!(matches!(pods.resolve("aaaaaaaa-0000-4000-8000-000000000003"), Err(PodError::Unknown(_))));
        assert!(matches!(pods.resolve(&format!("{whole}0")), Err(PodError::Unknown(_))));
        assert!(matches!(pods.resolve(&whole.to_uppercase()), Err(PodError::Unknown(_))));
    }
}
