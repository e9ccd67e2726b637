//! The standalone state directory on disk: read into a [`Snapshot`], watched with inotify (not
//! polled), and written atomically so a reader never sees half a file.
//!
//! The layout and how files combine are `ferrolb_proto::api::state`'s; this is the I/O around it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrolb_proto::api::manifest::ManifestError;
use ferrolb_proto::api::state::{Snapshot, is_manifest_path, is_status_path};
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

/// Which changes a watcher reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Everything: user manifests and the controller's status files.
    All,
    /// User manifests only (what the controller needs: it wrote the status itself).
    Manifests,
    /// Everything but the tree under this relative directory: the watcher's own writes (a
    /// speaker's `status/l2/<node>`), which it knows without re-reading the whole directory.
    AllBut(String),
}

impl Watch {
    fn reports(&self, relative: &str) -> bool {
        let hidden = relative.split('/').any(|part| part.starts_with('.'));
        !hidden
            && match self {
                Watch::All => true,
                Watch::Manifests => !is_status_path(relative),
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
    _watcher: notify::RecommendedWatcher,
}

impl Changes {
    /// Resolves after the next burst of relevant file events has settled. `None` if the watcher
    /// died.
    pub async fn changed(&mut self) -> Option<()> {
        self.events.recv().await?;
        loop {
            match tokio::time::timeout(SETTLE, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}

impl StateDir {
    /// Opens an existing directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateDirError> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|source| StateDirError::Io {
            path: root.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(StateDirError::NotADirectory(root));
        }
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every manifest and status file. A file that cannot be read becomes a problem in the
    /// snapshot; the rest is still read.
    pub fn read(&self) -> Result<Snapshot, StateDirError> {
        let mut files = Vec::new();
        let mut unreadable = Vec::new();
        self.walk(
            &self.root,
            &mut |relative, path| match std::fs::read_to_string(path) {
                Ok(text) => files.push((relative, text)),
                Err(err) => unreadable.push(ManifestError {
                    source: path.display().to_string(),
                    document: 0,
                    object: None,
                    field: String::new(),
                    message: format!("cannot read: {err}"),
                }),
            },
        )?;
        let mut snapshot = Snapshot::from_files(files);
        snapshot.problems.extend(unreadable);
        Ok(snapshot)
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
            } else if is_manifest_path(&relative) {
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
    /// then renamed over it. Parent directories are created.
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
            _watcher: watcher,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_proto::api::state::service_status_path;

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
            ("status/l2/n1", true, false, false),
            ("status/l2/n1/demo/web.yaml", true, false, false),
            ("status/l2/n10/demo/web.yaml", true, false, true),
            ("status/l2/n2/demo/web.yaml", true, false, true),
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
}
