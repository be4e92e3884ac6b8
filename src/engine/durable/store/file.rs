//! A position per file, written so that a crash at any instant leaves the old record or
//! the new one, never a torn one: temp file, fsync, rename, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use mongodb::bson::{Bson, Document};

use super::TokenStore;
use crate::engine::errors::{EngineError, ErrorCode};

pub struct FileStore {
    path: PathBuf,
    /// Temp files a killed writer left were looked for (once per store, at its first save:
    /// they come from an earlier run, and a directory listing per save costs for nothing).
    tidied: AtomicBool,
}

impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        FileStore {
            path,
            tidied: AtomicBool::new(false),
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::new(
            ErrorCode::TokenStore,
            format!("{what} {}: {e}", self.describe()),
        )
    }

    fn read(&self) -> Result<Option<Document>, EngineError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("cannot read", e)),
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| self.error("the stored position is unreadable in", e))?;
        match Bson::try_from(json) {
            Ok(Bson::Document(doc)) => Ok(Some(doc)),
            Ok(_) => Err(self.error("the stored position is not an object in", "")),
            Err(e) => Err(self.error("the stored position is unreadable in", e)),
        }
    }

    /// `tidy`: also remove stale temp files a killed writer left beside the file.
    fn write(&self, record: Document, tidy: bool) -> Result<(), EngineError> {
        let text = Bson::Document(record).into_canonical_extjson().to_string();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "position".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = write_durably(&tmp, text.as_bytes())
            .and_then(|()| fs::rename(&tmp, &self.path))
            .and_then(|()| sync_dir(&dir));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.error("cannot write", e))?;
        if tidy {
            remove_stale_temp_files(&dir, &name);
        }
        Ok(())
    }
}

/// A temp file this old was left by a process killed mid-write (a write takes milliseconds).
const STALE_TEMP_AFTER: Duration = Duration::from_secs(600);

/// Removes `.name.<pid>.tmp` files that a killed writer left behind. Best effort.
fn remove_stale_temp_files(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let ours = file_name.starts_with(&prefix) && file_name.ends_with(".tmp");
        let stale = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_TEMP_AFTER)
        };
        if ours && stale() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Makes the rename durable. Windows has no directory fsync (its rename is already
/// journaled by NTFS), so there it is a no-op.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates `path` with mode 0600 (positions are nobody else's business), writes, fsyncs.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl TokenStore for FileStore {
    fn load<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Option<Document>, EngineError>> {
        Box::pin(async move {
            let store = FileStore::new(self.path.clone());
            tokio::task::spawn_blocking(move || store.read())
                .await
                .map_err(|e| self.error("cannot read", e))?
        })
    }

    fn save<'a>(
        &'a self,
        _name: &'a str,
        record: Document,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let store = FileStore::new(self.path.clone());
            let tidy = !self.tidied.swap(true, Ordering::Relaxed);
            tokio::task::spawn_blocking(move || store.write(record, tidy))
                .await
                .map_err(|e| self.error("cannot write", e))?
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rcs-filestore-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join("position.json")
    }

    #[tokio::test]
    async fn saves_loads_and_replaces_with_mode_0600() {
        let path = temp_path("roundtrip");
        let store = FileStore::new(path.clone());
        assert_eq!(store.load("n").await.unwrap(), None);
        store.save("n", doc! {"a": 1}).await.unwrap();
        store.save("n", doc! {"a": 2}).await.unwrap();
        assert_eq!(store.load("n").await.unwrap(), Some(doc! {"a": 2}));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temp files left");
    }

    #[tokio::test]
    async fn a_save_removes_temp_files_a_killed_writer_left_long_ago() {
        let path = temp_path("stale");
        let dir = path.parent().unwrap().to_path_buf();
        let stale = dir.join(".position.json.4242.tmp");
        let fresh = dir.join(".position.json.4343.tmp"); // another writer, right now
        let unrelated = dir.join(".other.json.4242.tmp");
        for p in [&stale, &fresh, &unrelated] {
            fs::write(p, "{").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - STALE_TEMP_AFTER * 2;
        for p in [&stale, &unrelated] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        FileStore::new(path).save("n", doc! {"a": 1}).await.unwrap();
        assert!(!stale.exists(), "the stale temp file is gone");
        assert!(fresh.exists(), "a recent temp file may be in use: kept");
        assert!(unrelated.exists(), "another store's files are not ours");
    }

    #[tokio::test]
    async fn corrupt_file_is_a_clear_error_naming_the_path() {
        let path = temp_path("corrupt");
        fs::write(&path, "{ not json").unwrap();
        let err = FileStore::new(path.clone()).load("n").await.unwrap_err();
        assert_eq!(err.code, ErrorCode::TokenStore);
        assert!(
            err.message.contains(&path.display().to_string()),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn unwritable_directory_is_an_error() {
        let err = FileStore::new(PathBuf::from("/nonexistent-dir/x/position.json"))
            .save("n", doc! {"a": 1})
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TokenStore);
        assert!(err.message.contains("/nonexistent-dir/x/position.json"));
    }
}
