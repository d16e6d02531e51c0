//! Image -> host binary map: the process kubelet's whole "container runtime" catalogue.
//!
//! An image holds exactly one program. A pod's `command[0]` names that program (whatever path it
//! uses); the rest of `command` and `args` are passed to the mapped binary. Nothing is pulled.

use std::path::{Path, PathBuf};

/// One entry: `name` without a tag matches any tag (`streamjob/streamjob` matches
/// `streamjob/streamjob:dev`); with a tag or digest it matches exactly.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    pub name: String,
    pub binary: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<ImageEntry>,
}

/// Why an image cannot run; the message is shown in the container's waiting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    NotMapped(String),
    BinaryMissing(String),
}

impl ImageError {
    pub fn message(&self) -> &str {
        match self {
            ImageError::NotMapped(m) | ImageError::BinaryMissing(m) => m,
        }
    }
}

impl ImageMap {
    /// Parses `NAME=PATH` entries (flags or lines of a map file; `#` starts a comment).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for line in lines {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, path) = line
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("image map entry {line:?} is not NAME=PATH"))?;
            entries.push(ImageEntry {
                name: name.trim().to_string(),
                binary: PathBuf::from(path.trim()),
            });
        }
        Ok(Self { entries })
    }

    pub fn extend(&mut self, other: ImageMap) {
        self.entries.extend(other.entries);
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The binary for `image`; exact entries win over tag-less ones, later entries over earlier.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, ImageError> {
        let repo = strip_tag(image);
        let found = self
            .entries
            .iter()
            .rev()
            .find(|e| e.name == image)
            .or_else(|| self.entries.iter().rev().find(|e| e.name == repo));
        let Some(entry) = found else {
            return Err(ImageError::NotMapped(format!(
                "image {image:?} is not in the process kubelet's image map (known: {}); \
                 add it with --image NAME=PATH",
                self.names().join(", ")
            )));
        };
        if !is_executable(&entry.binary) {
            return Err(ImageError::BinaryMissing(format!(
                "image {image:?} maps to {} which is not an executable file (build it first, \
                 e.g. `cargo build`)",
                entry.binary.display()
            )));
        }
        Ok(entry.binary.clone())
    }
}

/// `repo/name:tag` -> `repo/name`, `name@sha256:..` -> `name`; a port in the registry is kept.
pub fn strip_tag(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_and_digests() {
        assert_eq!(strip_tag("streamjob/streamjob:dev"), "streamjob/streamjob");
        assert_eq!(strip_tag("localhost:5000/a/b:1"), "localhost:5000/a/b");
        assert_eq!(strip_tag("busybox@sha256:abc"), "busybox");
        assert_eq!(strip_tag("test/sh"), "test/sh");
    }

    #[test]
    fn resolves_tagless_and_exact() {
        let map = ImageMap::parse(["test/sh=/bin/sh", "test/sh:old=/bin/sleep"]).unwrap();
        assert_eq!(
            map.resolve("test/sh:latest").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            map.resolve("test/sh:old").unwrap(),
            PathBuf::from("/bin/sleep")
        );
        assert!(matches!(map.resolve("nope"), Err(ImageError::NotMapped(_))));
        let missing = ImageMap::parse(["x=/nonexistent/bin"]).unwrap();
        assert!(matches!(
            missing.resolve("x:1"),
            Err(ImageError::BinaryMissing(_))
        ));
    }
}
