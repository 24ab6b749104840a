//! Keeping the state private: the state directory is mode 0700 and the
//! database with its `-wal` and `-shm` files 0600, set explicitly so that
//! the result does not depend on the process umask. The audit log holds
//! every agency's SQL, client addresses and token ids; nobody but the
//! service's own user has a reason to read it.

use std::io;
use std::path::{Path, PathBuf};

/// Mode of the state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the state database and its `-wal` and `-shm` files.
pub const FILE_MODE: u32 = 0o600;

/// The database file and the `-wal` and `-shm` files SQLite keeps next to
/// it in WAL mode.
pub fn database_files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Creates `dir` and any missing parents (new directories get 0700), then
/// sets 0700 on `dir` itself.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Creates an empty file with mode 0600 unless it exists already, so that
/// SQLite opens a file that was never readable by others (SQLite gives the
/// `-wal` and `-shm` files the mode of the database file).
pub fn create_private_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => set_mode(path, FILE_MODE),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets `mode` on `path` if it exists (a no-op off Unix).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// The permission bits of `path` when group or others may read, write or
/// enter it; `None` when it is private or does not exist.
pub fn exposed(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The state directory and its database files that group or others can
/// read, with their modes.
pub fn exposed_state(dir: &Path, db: &Path) -> Vec<(PathBuf, u32)> {
    std::iter::once(dir.to_path_buf())
        .chain(database_files(db))
        .filter_map(|p| exposed(&p).map(|m| (p, m)))
        .collect()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_whatever_existed_before() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/state");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(exposed(&dir), Some(0o755));
        create_private_dir(&dir).unwrap();
        assert_eq!(exposed(&dir), None);
        let f = dir.join("x");
        create_private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(exposed(&dir.join("missing")), None);
        assert_eq!(
            database_files(&f)[2].file_name().unwrap().to_str(),
            Some("x-shm")
        );
    }
}
