//! Files that hold secrets: the data dir and what lbd writes in it.
//!
//! Invariant: the data dir and every dir lbd makes in it are 0700, and
//! every file 0600, owned by the user lbd runs as. A file is created with
//! its mode (never created wider and narrowed after), and [`lock_down`]
//! narrows what an older lbd left wider (it wrote 0755 dirs and 0644
//! files), so an upgrade closes the data dir too.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of lbd's dirs.
pub const DIR_MODE: u32 = 0o700;
/// Mode of lbd's files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, or narrows an
/// existing one to 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Writes `bytes` to `path` through a temporary file created 0600 and
/// renamed over it, so a reader sees the old or the new content.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = Path::new(&temporary);
    let _ = std::fs::remove_file(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(temporary, path)
}

/// Opens `path` for appending, creating it 0600 if missing (an existing
/// file keeps its mode: the operator may have widened it on purpose).
pub fn append_private(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Narrows `dir` and everything under it to 0700 dirs and 0600 files
/// (symbolic links are left alone: their mode means nothing).
pub fn lock_down(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            lock_down(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), Permissions::from_mode(FILE_MODE))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_dirs_and_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("secret");
        write_private(&file, b"one").unwrap();
        assert_eq!(mode(&file), 0o600);
        write_private(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert!(!dir.join("secret.tmp").exists());
    }

    #[test]
    fn lock_down_narrows_what_an_older_lbd_left_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("tasks")).unwrap();
        std::fs::write(dir.join("node.json"), "{}").unwrap();
        std::fs::write(dir.join("tasks/t.log"), "x").unwrap();
        for path in [&dir, &dir.join("tasks")] {
            std::fs::set_permissions(path, Permissions::from_mode(0o755)).unwrap();
        }
        for path in [dir.join("node.json"), dir.join("tasks/t.log")] {
            std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        }
        lock_down(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tasks")), 0o700);
        assert_eq!(mode(&dir.join("node.json")), 0o600);
        assert_eq!(mode(&dir.join("tasks/t.log")), 0o600);
    }
}
