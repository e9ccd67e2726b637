//! The standalone state directory on disk: read into a [`Snapshot`], watched with inotify (not
//! polled), and written atomically so a reader never sees half a file.
//!
//! The layout and how files combine are `ferrolb_proto::api::state`'s; this is the I/O around it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrolb_proto::api::manifest::{Manifest, ManifestError, parse_documents};
use ferrolb_proto::api::state::{
    CONTROLLER_RECORD_PATH, POOLS_STATUS_DIR, ParsedFile, Snapshot, is_manifest_path,
    is_status_path, last_good_path,
};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the directory must stay quiet before a burst of file events counts as one change:
/// editors and `cp` of several files produce bursts, and one reload per burst is enough.
pub const SETTLE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot watch state directory {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("{0:?} is not a path inside the state directory")]
    OutsidePath(String),
}

/// A state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// Reads a state directory again and again, keeping each user manifest file's last good
/// version: a file that stops reading in full (a YAML error, a document FerroLB cannot read, an
/// I/O error) or is emptied while it held objects (an editor's save, a `>` redirect) keeps the
/// objects of its last good version, with a problem saying so, until it is fixed or deleted.
/// Removing objects takes deleting the file, or deleting them from a file that still reads.
#[derive(Debug)]
pub struct Reader {
    dir: StateDir,
    /// The text and object count of every manifest file as it last read in full.
    last_good: BTreeMap<String, (String, usize)>,
}

impl Reader {
    /// Reads every manifest and status file, each manifest file in its current version or,
    /// when that does not read, its last good one.
    pub fn read(&mut self) -> Result<Snapshot, StateDirError> {
        let mut files = Vec::new();
        self.dir.walk(&self.dir.root, &mut |relative, path| {
            if is_manifest_path(&relative) {
                files.push((relative, std::fs::read_to_string(path)));
            }
        })?;
        let present: BTreeSet<String> = files.iter().map(|(path, _)| path.clone()).collect();
        self.last_good.retain(|path, _| present.contains(path));
        let (mut problems, mut held) = (Vec::new(), Vec::new());
        let mut parsed: Vec<ParsedFile> = Vec::with_capacity(files.len());
        for (path, text) in files {
            let documents = match text {
                Ok(text) if is_status_path(&path) => parse_documents(&path, &text),
                Ok(text) => match self.judge(&path, text) {
                    Ok(documents) => documents,
                    Err(why) => self.hold(&path, why, &mut problems, &mut held),
                },
                Err(err) => {
                    let why = vec![file_problem(&path, format!("cannot read: {err}"))];
                    self.hold(&path, why, &mut problems, &mut held)
                }
            };
            parsed.push((path, documents));
        }
        let mut snapshot = Snapshot::from_parsed(parsed);
        snapshot.problems.extend(problems);
        snapshot.held = held;
        Ok(snapshot)
    }

    /// A manifest file's documents when its text reads in full (it becomes the last good
    /// version), or why not: its errors, or that it was emptied while it held objects.
    fn judge(
        &mut self,
        path: &str,
        text: String,
    ) -> Result<Vec<Result<Manifest, ManifestError>>, Vec<ManifestError>> {
        let documents = parse_documents(path, &text);
        let errors: Vec<ManifestError> = documents.iter().filter_map(|d| d.clone().err()).collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        if documents.is_empty() && self.last_good(path).is_some() {
            return Err(vec![file_problem(path, "the file is empty".to_owned())]);
        }
        self.last_good
            .insert(path.to_owned(), (text, documents.len()));
        Ok(documents)
    }

    /// The last good version of a manifest file that held objects, with their number: as this
    /// reader saw it, or as the controller kept it (`status/last-good/`, so a restart, another
    /// daemon, and `ferrolb-controller status` use the same version).
    fn last_good(&self, path: &str) -> Option<(String, usize)> {
        let known = self.last_good.get(path).cloned().or_else(|| {
            let text = self.dir.read_file(&last_good_path(path)).ok()??;
            let documents = parse_documents(path, &text);
            documents
                .iter()
                .all(Result::is_ok)
                .then_some((text, documents.len()))
        });
        known.filter(|(_, objects)| *objects > 0)
    }

    /// The text of the last good version this reader saw of a manifest file that it now keeps
    /// using, for the controller to keep in `status/last-good/`.
    pub fn last_good_text(&self, path: &str) -> Option<&str> {
        self.last_good.get(path).map(|(text, _)| text.as_str())
    }

    /// The last good version's documents, with `why` reported as the reason it is used;
    /// without one, the errors are all there is.
    fn hold(
        &self,
        path: &str,
        why: Vec<ManifestError>,
        problems: &mut Vec<ManifestError>,
        held: &mut Vec<String>,
    ) -> Vec<Result<Manifest, ManifestError>> {
        let Some((text, objects)) = self.last_good(path) else {
            return why.into_iter().map(Err).collect();
        };
        let objects = match objects {
            1 => "1 object".to_owned(),
            n => format!("{n} objects"),
        };
        held.push(path.to_owned());
        problems.extend(why.into_iter().map(|mut err| {
            err.message = format!(
                "{}; the last version read in full ({objects}) stays in use until the file is \
                 fixed or deleted",
                err.message
            );
            err
        }));
        parse_documents(path, &text)
    }
}

/// A problem with a file as a whole.
fn file_problem(path: &str, message: String) -> ManifestError {
    ManifestError {
        source: path.to_owned(),
        document: 0,
        object: None,
        field: String::new(),
        message,
    }
}

/// Which changes a watcher reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Everything: user manifests and the controller's status files.
    All,
    /// User manifests, and the pools' status files: what the controller needs (it wrote the
    /// status itself, but a hand edit of a pool's counters must be reverted, as MetalLB does).
    Manifests,
    /// Everything but the tree under this relative directory: the watcher's own writes (a
    /// speaker's `status/l2/<node>`), which it knows without re-reading the whole directory.
    AllBut(String),
}

impl Watch {
    fn reports(&self, relative: &str) -> bool {
        let hidden = relative.split('/').any(|part| part.starts_with('.'));
        // The controller's heartbeat is nobody's input: every 10 s would wake every reader.
        !hidden
            && relative != CONTROLLER_RECORD_PATH
            && match self {
                Watch::All => true,
                Watch::Manifests => {
                    !is_status_path(relative)
                        || relative.starts_with(&format!("{POOLS_STATUS_DIR}/"))
                }
                Watch::AllBut(own) => relative
                    .strip_prefix(own.as_str())
                    .is_none_or(|rest| !rest.is_empty() && !rest.starts_with('/')),
            }
    }
}

/// Settled changes of a watched directory. Dropping it stops watching.
#[derive(Debug)]
pub struct Changes {
    events: mpsc::UnboundedReceiver<()>,
    /// A burst under way: when it counts as settled. Kept here, not in the future, so that a
    /// `select!` that drops [`changed`](Self::changed) for another branch loses no change.
    settles_at: Option<tokio::time::Instant>,
    _watcher: notify::RecommendedWatcher,
}

impl Changes {
    /// Resolves after the next burst of relevant file events has settled. `None` if the watcher
    /// died. Cancel-safe: a call dropped mid-burst is resumed by the next.
    pub async fn changed(&mut self) -> Option<()> {
        loop {
            let Some(at) = self.settles_at else {
                self.events.recv().await?;
                self.settles_at = Some(tokio::time::Instant::now() + SETTLE);
                continue;
            };
            match tokio::time::timeout_at(at, self.events.recv()).await {
                Ok(Some(())) => self.settles_at = Some(tokio::time::Instant::now() + SETTLE),
                Ok(None) => return None,
                Err(_) => {
                    self.settles_at = None;
                    return Some(());
                }
            }
        }
    }
}

impl StateDir {
    /// Opens an existing directory. Its path is made absolute: the watcher reports absolute
    /// paths, which a relative root (`--state-dir .`) would never match.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateDirError> {
        let root = root.into();
        let io = |source| StateDirError::Io {
            path: root.clone(),
            source,
        };
        let absolute = std::fs::canonicalize(&root).map_err(io)?;
        if !std::fs::metadata(&absolute).map_err(io)?.is_dir() {
            return Err(StateDirError::NotADirectory(root));
        }
        Ok(StateDir { root: absolute })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every manifest and status file once. A file that cannot be read becomes a problem
    /// in the snapshot; the rest is still read. Daemons that read again and again use a
    /// [`Reader`], which keeps the last good version of each file.
    pub fn read(&self) -> Result<Snapshot, StateDirError> {
        self.reader().read()
    }

    /// A reader that remembers each manifest file's last good version.
    pub fn reader(&self) -> Reader {
        Reader {
            dir: self.clone(),
            last_good: BTreeMap::new(),
        }
    }

    /// The text of one file, `None` when it does not exist.
    pub fn read_file(&self, relative: &str) -> Result<Option<String>, StateDirError> {
        let path = self.resolve(relative)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateDirError::Io { path, source }),
        }
    }

    /// Relative paths of the files below `relative_dir` (e.g. `status/services`).
    pub fn files_under(&self, relative_dir: &str) -> Result<Vec<String>, StateDirError> {
        let dir = self.resolve(relative_dir)?;
        let mut found = Vec::new();
        if dir.is_dir() {
            self.walk(&dir, &mut |relative, _| found.push(relative))?;
        }
        Ok(found)
    }

    /// Visits every file below `dir` but hidden ones, by name order.
    fn walk(&self, dir: &Path, visit: &mut dyn FnMut(String, &Path)) -> Result<(), StateDirError> {
        let io = |source| StateDirError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(relative) = path.strip_prefix(&self.root) else {
                continue;
            };
            let relative = relative.to_string_lossy().into_owned();
            if path.is_dir() {
                self.walk(&path, visit)?;
            } else {
                visit(relative, &path);
            }
        }
        Ok(())
    }

    fn resolve(&self, relative: &str) -> Result<PathBuf, StateDirError> {
        let path = Path::new(relative);
        let plain = path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if relative.is_empty() || !plain {
            return Err(StateDirError::OutsidePath(relative.to_owned()));
        }
        Ok(self.root.join(path))
    }

    /// Writes `text` to `relative` atomically: a temporary file beside it, flushed to disk,
    /// then renamed over it. Parent directories are created. The file is readable by every
    /// user (0644, less the umask), as a manifest is: the controller and the speakers may run
    /// as different users (the chart's: 65532 and root without CAP_DAC_OVERRIDE), and each
    /// reads what the other writes.
    pub fn write_atomic(&self, relative: &str, text: &str) -> Result<(), StateDirError> {
        let path = self.resolve(relative)?;
        let parent = path.parent().unwrap_or(&self.root).to_owned();
        let io = |source| StateDirError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&parent).map_err(io)?;
        let mut file = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(&parent)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|err| io(err.error))?;
        Ok(())
    }

    /// Removes a file; a file already gone is fine.
    pub fn remove(&self, relative: &str) -> Result<(), StateDirError> {
        let path = self.resolve(relative)?;
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(StateDirError::Io { path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Starts watching the directory tree (inotify).
    pub fn watch(&self, which: Watch) -> Result<Changes, StateDirError> {
        let (tx, events) = mpsc::unbounded_channel();
        let root = self.root.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else {
                    // An overflowed or failed watch: report a change so the reader re-reads all.
                    let _ = tx.send(());
                    return;
                };
                if event.kind.is_access() {
                    return;
                }
                let relevant = event.paths.iter().any(|path| {
                    path.strip_prefix(&root)
                        .is_ok_and(|relative| which.reports(&relative.to_string_lossy()))
                });
                if relevant {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| StateDirError::Watch {
                path: self.root.clone(),
                source,
            })?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|source| StateDirError::Watch {
                path: self.root.clone(),
                source,
            })?;
        Ok(Changes {
            events,
            settles_at: None,
            _watcher: watcher,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_proto::api::state::{last_good_path, service_status_path};

    const POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan}\nspec:\n  addresses: [10.250.0.100/30]\n";

    #[test]
    fn reads_writes_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.write_atomic("pools/lan.yaml", POOL).unwrap();
        state.write_atomic("notes.txt.yaml.bak", "ignored").unwrap();
        let snapshot = state.read().unwrap();
        assert_eq!(snapshot.pools.len(), 1);
        assert_eq!(snapshot.problems, vec![]);

        let status = service_status_path("web", "app");
        state
            .write_atomic(
                &status,
                "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: web}\n",
            )
            .unwrap();
        assert_eq!(
            state.files_under("status/services").unwrap(),
            vec![status.clone()]
        );
        state.remove(&status).unwrap();
        state.remove(&status).unwrap();
        assert!(state.files_under("status/services").unwrap().is_empty());
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("pools"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn written_files_are_readable_by_every_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state
            .write_atomic("status/services/web/app.yaml", POOL)
            .unwrap();
        let mode = std::fs::metadata(dir.path().join("status/services/web/app.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o444, 0o444, "mode {mode:o}");
    }

    /// Issue 19: a broken edit of a live manifest must not make its objects vanish.
    #[test]
    fn a_file_that_stops_reading_keeps_its_last_good_version_until_fixed_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut reader = state.reader();
        let pools = |s: &Snapshot| s.pools.len();
        let problems =
            |s: &Snapshot| -> Vec<String> { s.problems.iter().map(ToString::to_string).collect() };

        // A new file that does not read is reported; there is nothing to keep.
        std::fs::write(dir.path().join("pool.yaml"), "spec: {\n").unwrap();
        let snapshot = reader.read().unwrap();
        assert_eq!((pools(&snapshot), snapshot.held.len()), (0, 0));
        assert!(
            problems(&snapshot)[0].contains("line 2 column 1"),
            "{:?}",
            problems(&snapshot)
        );

        std::fs::write(dir.path().join("pool.yaml"), POOL).unwrap();
        let snapshot = reader.read().unwrap();
        assert_eq!((pools(&snapshot), snapshot.problems.len()), (1, 0));

        for (broken, said) in [
            (POOL.replace("spec:", "spec: {"), "not valid YAML"),
            (String::new(), "the file is empty"),
            ("# all commented out\n  \n".to_owned(), "the file is empty"),
            (POOL.replace("addresses", "adresses"), "spec"),
        ] {
            std::fs::write(dir.path().join("pool.yaml"), &broken).unwrap();
            let snapshot = reader.read().unwrap();
            assert_eq!(pools(&snapshot), 1, "{broken:?} keeps the pool");
            assert_eq!(snapshot.held, ["pool.yaml"]);
            let problems = problems(&snapshot);
            assert!(
                problems.len() == 1
                    && problems[0].starts_with("pool.yaml")
                    && problems[0].contains(said)
                    && problems[0].ends_with(
                        "the last version read in full (1 object) stays in use until the file \
                         is fixed or deleted"
                    ),
                "{broken:?}: {problems:?}"
            );
            // A one-shot read has no memory: the pool is missing there.
            assert_eq!(pools(&state.read().unwrap()), 0);
        }

        // Fixed: the new version is read (and becomes the one kept).
        let edited = POOL.replace("/30", "/29");
        std::fs::write(dir.path().join("pool.yaml"), &edited).unwrap();
        let snapshot = reader.read().unwrap();
        assert_eq!((snapshot.problems.len(), snapshot.held.len()), (0, 0));
        assert_eq!(snapshot.pools[0].spec.addresses, ["10.250.0.100/29"]);

        // Deleting the file, or the objects from a file that still reads, removes them.
        std::fs::write(dir.path().join("pool.yaml"), "").unwrap();
        assert_eq!(pools(&reader.read().unwrap()), 1);
        std::fs::remove_file(dir.path().join("pool.yaml")).unwrap();
        assert_eq!(pools(&reader.read().unwrap()), 0);
        std::fs::write(dir.path().join("pool.yaml"), "").unwrap();
        let snapshot = reader.read().unwrap();
        assert_eq!((snapshot.problems.len(), snapshot.held.len()), (0, 0));
        std::fs::write(dir.path().join("pool.yaml"), POOL).unwrap();
        assert_eq!(pools(&reader.read().unwrap()), 1);
        let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n";
        std::fs::write(dir.path().join("pool.yaml"), namespace).unwrap();
        let snapshot = reader.read().unwrap();
        assert_eq!((pools(&snapshot), snapshot.namespaces.len()), (0, 1));
    }

    #[test]
    fn a_new_reader_uses_the_copy_the_controller_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.write_atomic("pool.yaml", "").unwrap();
        state
            .write_atomic(&last_good_path("pool.yaml"), POOL)
            .unwrap();
        // A restart (or `ferrolb-controller status`) while the file is broken.
        let snapshot = state.read().unwrap();
        assert_eq!((snapshot.pools.len(), snapshot.held.len()), (1, 1));
        assert!(
            snapshot.problems[0]
                .message
                .starts_with("the file is empty")
        );
        // The copy is never read as a manifest or a status file of its own.
        std::fs::remove_file(dir.path().join("pool.yaml")).unwrap();
        let snapshot = state.read().unwrap();
        assert_eq!((snapshot.pools.len(), snapshot.problems.len()), (0, 0));
    }

    #[test]
    fn paths_must_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        for bad in ["../escape.yaml", "/etc/passwd", "", "a/../../b.yaml"] {
            assert!(
                matches!(
                    state.write_atomic(bad, "x"),
                    Err(StateDirError::OutsidePath(_))
                ),
                "{bad}"
            );
        }
        // Relative roots become absolute, as the watcher's paths are.
        assert!(StateDir::open(".").unwrap().root().is_absolute());
        let missing = StateDir::open(dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("missing") && missing.contains("No such file"),
            "{missing}"
        );
    }

    #[test]
    fn a_watch_reports_what_it_is_for() {
        let own = Watch::AllBut("status/l2/n1".to_owned());
        for (path, all, manifests, all_but_own) in [
            ("pools.yaml", true, true, true),
            ("apps/.web.yaml.tmp", false, false, false),
            ("status/services/demo/web.yaml", true, false, true),
            ("status/ipaddresspools/lan.yaml", true, true, true),
            ("status/l2/n1", true, false, false),
            ("status/l2/n1/demo/web.yaml", true, false, false),
            ("status/l2/n10/demo/web.yaml", true, false, true),
            ("status/l2/n2/demo/web.yaml", true, false, true),
            (CONTROLLER_RECORD_PATH, false, false, false),
        ] {
            assert_eq!(Watch::All.reports(path), all, "{path}");
            assert_eq!(Watch::Manifests.reports(path), manifests, "{path}");
            assert_eq!(own.reports(path), all_but_own, "{path}");
        }
    }

    #[tokio::test]
    async fn changes_settle_into_one_and_status_writes_can_be_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut manifests = state.watch(Watch::Manifests).unwrap();
        let mut all = state.watch(Watch::All).unwrap();

        state
            .write_atomic(&service_status_path("web", "app"), "kind: Service")
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(2), all.changed()).await;
        assert_eq!(seen.unwrap(), Some(()));

        for i in 0..5 {
            state.write_atomic(&format!("pool-{i}.yaml"), POOL).unwrap();
        }
        let seen = tokio::time::timeout(Duration::from_secs(2), manifests.changed()).await;
        assert_eq!(
            seen.unwrap(),
            Some(()),
            "the manifest watcher saw the burst"
        );
        // A slow disk may split the burst; at most one change per write.
        let mut extra = 0;
        while tokio::time::timeout(Duration::from_millis(200), manifests.changed())
            .await
            .is_ok()
        {
            extra += 1;
            assert!(extra < 5);
        }

        state
            .write_atomic(&service_status_path("web", "other"), "kind: Service")
            .unwrap();
        let ignored = tokio::time::timeout(Duration::from_millis(200), manifests.changed()).await;
        assert!(
            ignored.is_err(),
            "status writes do not wake the manifest watcher"
        );
    }

    #[tokio::test]
    async fn a_change_is_not_lost_when_another_branch_wins_the_select() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.write_atomic("apps/.keep.yaml", "").unwrap();
        let mut changes = state.watch(Watch::Manifests).unwrap();
        state.write_atomic("apps/web.yaml", POOL).unwrap();
        // As the controller's loop does with its heartbeat: another branch is ready while the
        // burst settles, and the call is dropped.
        let dropped = tokio::time::timeout(SETTLE / 2, changes.changed()).await;
        assert!(dropped.is_err(), "still settling when dropped");
        let seen = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await;
        assert_eq!(seen.unwrap(), Some(()), "the next call still reports it");
    }
}
