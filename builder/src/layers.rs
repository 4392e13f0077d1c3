//! Image layers: unpacking them into a root file system (OCI whiteouts
//! honoured), and writing reproducible ones.
//!
//! A written layer is the same bytes for the same files, whenever and
//! wherever it is built: entries sorted by path, every mtime 1980-01-01,
//! owner `CNB_UID:CNB_GID`, no extended attributes, and gzip with a fixed
//! level and no timestamp or name in its header — so an unchanged layer
//! has the digest the registry already knows, and is never uploaded again.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};

use crate::{CNB_GID, CNB_UID};

/// 1980-01-01T00:00:01Z, the buildpacks spec's fixed layer time.
pub const LAYER_MTIME: u64 = 315_532_801;

pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Opens a layer blob, gunzipping it when it is compressed.
fn layer_reader(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(f);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(GzDecoder::new(chained)))
    } else {
        Ok(Box::new(chained))
    }
}

/// A path inside a layer made relative and checked: no `..`, no root.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one layer on top of `root`: its whiteouts first (a `.wh.<name>`
/// removes `<name>` from the layers below, `.wh..wh..opq` empties its
/// directory of them), then its entries. Paths that would leave `root` are
/// refused.
pub fn apply_layer(layer: &Path, root: &Path) -> io::Result<()> {
    // Whiteouts only hide what lower layers put there: take them first.
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(rel) = clean(&path) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("layer path {} leaves the root", path.display()),
            ));
        };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let parent = root.join(rel.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            if let Ok(children) = fs::read_dir(&parent) {
                for child in children {
                    remove_any(&child?.path())?;
                }
            }
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&parent.join(hidden))?;
        }
    }
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".wh."))
        {
            continue;
        }
        // A directory replacing a file (or the other way) from a lower layer.
        if let Some(rel) = clean(&path) {
            let target = root.join(&rel);
            if let Ok(m) = fs::symlink_metadata(&target) {
                let is_dir = entry.header().entry_type().is_dir();
                if m.is_dir() != is_dir || (m.file_type().is_symlink() && !is_dir) {
                    remove_any(&target)?;
                }
            }
        }
        entry.unpack_in(root)?;
    }
    Ok(())
}

/// A written layer: where its compressed bytes are, and its identities.
#[derive(Debug, Clone)]
pub struct WrittenLayer {
    pub path: PathBuf,
    /// Digest of the gzipped bytes (the blob).
    pub digest: String,
    /// Digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: String,
    pub size: u64,
}

/// Hashes and counts what goes through it.
pub(crate) struct Hashing<W: Write> {
    pub(crate) inner: W,
    pub(crate) hasher: Sha256,
    pub(crate) count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What goes in a layer: files from `source` placed at `target` (a path
/// inside the image, without the leading `/`), plus extra entries.
pub enum Entry {
    /// The tree under `source`, at `target`.
    Tree { source: PathBuf, target: PathBuf },
    /// One file with these bytes and mode.
    File {
        target: PathBuf,
        bytes: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link.
    Symlink { target: PathBuf, points_to: PathBuf },
}

/// Writes a reproducible layer holding `entries` to `out` (gzipped), with
/// every parent directory of every entry.
pub fn write_layer(entries: &[Entry], out: &Path) -> io::Result<WrittenLayer> {
    write_layer_owned(entries, out, CNB_UID, CNB_GID)
}

/// [`write_layer`] with every entry owned by `uid`/`gid` (builder images'
/// `/cnb` is root's).
pub fn write_layer_owned(
    entries: &[Entry],
    out: &Path,
    uid: u32,
    gid: u32,
) -> io::Result<WrittenLayer> {
    // Collect (path in image, what) in sorted order.
    enum Item {
        Dir(u32),
        File(PathBuf, u32),
        Bytes(Vec<u8>, u32),
        Link(PathBuf),
    }
    let mut items: std::collections::BTreeMap<PathBuf, Item> = Default::default();
    let add_parents = |items: &mut std::collections::BTreeMap<PathBuf, Item>, p: &Path| {
        let mut acc = PathBuf::new();
        if let Some(parent) = p.parent() {
            for c in parent.components() {
                acc.push(c);
                items.entry(acc.clone()).or_insert(Item::Dir(0o755));
            }
        }
    };
    for e in entries {
        match e {
            Entry::Tree { source, target } => {
                add_parents(&mut items, &target.join("x"));
                walk(source, target, &mut |image_path, meta, real| {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode() & 0o7777;
                    let item = if meta.file_type().is_symlink() {
                        Item::Link(fs::read_link(real)?)
                    } else if meta.is_dir() {
                        Item::Dir(mode)
                    } else {
                        Item::File(real.to_owned(), mode)
                    };
                    items.insert(image_path.to_owned(), item);
                    Ok(())
                })?;
            }
            Entry::File {
                target,
                bytes,
                mode,
            } => {
                add_parents(&mut items, target);
                items.insert(target.clone(), Item::Bytes(bytes.clone(), *mode));
            }
            Entry::Symlink { target, points_to } => {
                add_parents(&mut items, target);
                items.insert(target.clone(), Item::Link(points_to.clone()));
            }
        }
    }

    let file = BufWriter::new(File::create(out)?);
    let gz_hash = Hashing {
        inner: file,
        hasher: Sha256::new(),
        count: 0,
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(gz_hash, Compression::new(6));
    let tar_hash = Hashing {
        inner: gz,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut builder = tar::Builder::new(tar_hash);
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, item) in &items {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(LAYER_MTIME);
        header.set_uid(uid as u64);
        header.set_gid(gid as u64);
        match item {
            Item::Dir(mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, path, io::empty())?;
            }
            Item::File(real, mode) => {
                let f = File::open(real)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(f.metadata()?.len());
                builder.append_data(&mut header, path, f)?;
            }
            Item::Bytes(bytes, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, path, bytes.as_slice())?;
            }
            Item::Link(to) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, to)?;
            }
        }
    }
    let tar_hash = builder.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(tar_hash.hasher.finalize()));
    let gz_hash = tar_hash.inner.finish()?;
    let digest = format!("sha256:{}", hex::encode(gz_hash.hasher.finalize()));
    let size = gz_hash.count;
    gz_hash
        .inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(WrittenLayer {
        path: out.to_owned(),
        digest,
        diff_id,
        size,
    })
}

/// Visits `dir` recursively in sorted order, calling `f(path in image,
/// metadata, real path)`; the image path is `prefix` joined with the
/// relative path.
fn walk(
    dir: &Path,
    prefix: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata, &Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let real = child.path();
        let meta = fs::symlink_metadata(&real)?;
        let image_path = prefix.join(child.file_name());
        f(&image_path, &meta, &real)?;
        if meta.is_dir() {
            walk(&real, &image_path, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, entries: &[(&str, Option<&str>)]) -> PathBuf {
        // (path, Some(content)) = file, None = directory.
        let path = dir.join(name);
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for (p, content) in entries {
            let mut h = tar::Header::new_gnu();
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, p, c.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
            }
        }
        b.finish().unwrap();
        path
    }

    #[test]
    fn whiteouts_hide_lower_layers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(
            dir.path(),
            "l1.tar",
            &[
                ("etc", None),
                ("etc/a", Some("a")),
                ("etc/b", Some("b")),
                ("opt", None),
                ("opt/x", Some("x")),
                ("opt/y", Some("y")),
            ],
        );
        let l2 = layer(
            dir.path(),
            "l2.tar",
            &[
                ("etc/.wh.a", Some("")),
                ("opt/.wh..wh..opq", Some("")),
                ("opt/z", Some("z")),
                ("etc/c", Some("c")),
            ],
        );
        apply_layer(&l1, &root).unwrap();
        apply_layer(&l2, &root).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(fs::read_to_string(root.join("etc/b")).unwrap(), "b");
        assert_eq!(fs::read_to_string(root.join("etc/c")).unwrap(), "c");
        assert!(!root.join("opt/x").exists() && !root.join("opt/y").exists());
        assert_eq!(
            fs::read_to_string(root.join("opt/z")).unwrap(),
            "z",
            "the opaque dir keeps this layer's own entries"
        );
        assert!(!root.join("etc/.wh.a").exists());
    }

    #[test]
    fn escaping_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let path = dir.path().join("evil.tar");
        {
            let mut b = tar::Builder::new(File::create(&path).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(1);
            h.set_mode(0o644);
            // Bypass the builder's own check by writing the name raw.
            h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        assert!(apply_layer(&path, &root).is_err());
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn written_layers_are_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(src.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("b.txt", src.join("link")).unwrap();
        let entries = |src: &Path| {
            vec![
                Entry::Tree {
                    source: src.to_owned(),
                    target: "layers/bp/layer".into(),
                },
                Entry::File {
                    target: "cnb/x".into(),
                    bytes: b"x".to_vec(),
                    mode: 0o755,
                },
            ]
        };
        let a = write_layer(&entries(&src), &dir.path().join("a.tgz")).unwrap();
        // Touch files (new mtimes) and write again: the same bytes.
        fs::write(src.join("b.txt"), "b").unwrap();
        let b = write_layer(&entries(&src), &dir.path().join("b.tgz")).unwrap();
        assert_eq!((a.digest.clone(), a.diff_id.clone()), (b.digest, b.diff_id));
        // And it unpacks to the same tree, parents included.
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        apply_layer(&a.path, &root).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("layers/bp/layer/bin/tool")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_link(root.join("layers/bp/layer/link")).unwrap(),
            Path::new("b.txt")
        );
        assert_eq!(fs::read(root.join("cnb/x")).unwrap(), b"x");
        let size = fs::metadata(&a.path).unwrap().len();
        assert_eq!(size, a.size);
    }
}
