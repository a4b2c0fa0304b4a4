//! What `sopm fn deploy` sends: a directory packed into a tar.gz in memory (without
//! `.git`, `__pycache__` and `node_modules`), and the multipart body that carries it.

use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

/// Directories never packed.
pub const SKIPPED_DIRS: &[&str] = &[".git", "__pycache__", "node_modules"];

/// A packed directory.
#[derive(Debug)]
pub struct Packed {
    /// The tar.gz bytes.
    pub archive: Vec<u8>,
    /// How many files it holds.
    pub files: usize,
    /// Paths left out because they are symbolic links or special files.
    pub skipped: Vec<String>,
}

/// Packs the regular files under `dir` (relative paths, sorted, modes kept) into a
/// tar.gz. Symbolic links and special files are left out and listed in
/// [`Packed::skipped`].
pub fn pack_dir(dir: &Path) -> io::Result<Packed> {
    let mut paths = Vec::new();
    let mut skipped = Vec::new();
    walk(dir, "", &mut paths, &mut skipped)?;
    paths.sort();
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    tar.mode(tar::HeaderMode::Deterministic);
    for rel in &paths {
        let full = dir.join(rel);
        let meta = std::fs::metadata(&full)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(meta.len());
        header.set_entry_type(tar::EntryType::Regular);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            header.set_mode(if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            });
        }
        #[cfg(not(unix))]
        header.set_mode(0o644);
        header.set_mtime(0);
        let file = std::fs::File::open(&full)?;
        tar.append_data(&mut header, rel, file)?;
    }
    let archive = tar.into_inner()?.finish()?;
    Ok(Packed {
        archive,
        files: paths.len(),
        skipped,
    })
}

fn walk(
    root: &Path,
    rel: &str,
    out: &mut Vec<String>,
    skipped: &mut Vec<String>,
) -> io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            skipped.push(entry.path().display().to_string());
            continue;
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name) {
                walk(root, &path, out, skipped)?;
            }
        } else if kind.is_file() {
            out.push(path);
        } else {
            skipped.push(path);
        }
    }
    Ok(())
}

/// A `multipart/form-data` body with a `metadata` JSON part and an `archive` part;
/// returns the content type (with its boundary) and the body.
pub fn multipart_body(
    metadata: &serde_json::Value,
    archive: &[u8],
    filename: &str,
) -> (String, Vec<u8>) {
    let boundary = format!("sopm-{:016x}{:016x}", rand_u64(), rand_u64());
    let mut body = Vec::with_capacity(archive.len() + 1024);
    let meta = serde_json::to_vec(metadata).unwrap_or_default();
    let _ = write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n"
    );
    body.extend_from_slice(&meta);
    let _ = write!(
        body,
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
        filename.replace(['"', '\r', '\n'], "_")
    );
    body.extend_from_slice(archive);
    let _ = write!(body, "\r\n--{boundary}--\r\n");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A boundary only has to be unlikely to occur in the archive; the std hasher's
    // random keys give that without another dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_files_but_not_caches_or_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("main.py"), "def handle(e, c):\n    return e\n").unwrap();
        std::fs::create_dir_all(d.join("pkg/__pycache__")).unwrap();
        std::fs::write(d.join("pkg/util.py"), "X = 1\n").unwrap();
        std::fs::write(d.join("pkg/__pycache__/util.pyc"), "junk").unwrap();
        std::fs::create_dir_all(d.join(".git")).unwrap();
        std::fs::write(d.join(".git/HEAD"), "ref").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap();
        let packed = pack_dir(d).unwrap();
        assert_eq!(packed.files, 2);
        #[cfg(unix)]
        assert_eq!(packed.skipped, vec!["passwd".to_string()]);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&packed.archive[..]));
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, vec!["main.py", "pkg/util.py"]);
    }
}
