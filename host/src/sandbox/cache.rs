//! The on-disk cache of compiled components.
//!
//! Compiling is slow (tens of ms for Rust guests, 8–15 s for Python and JS ones) and loading a
//! compiled artifact fast (~0.1 ms), but loading is `unsafe`: wasmtime trusts the bytes. So an
//! artifact is only ever loaded if it carries a valid HMAC made with this cache's secret key
//! over its file name (component digest, metering, engine compatibility hash) and contents.
//! Anything else — a corrupted, truncated, tampered or foreign file — is recompiled and
//! replaced, never loaded.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::Error;
use super::engine::Metering;

const MAGIC: &[u8; 8] = b"WTQART1\n";
const TAG_LEN: usize = 32;
const KEY_FILE: &str = "artifact.key";

/// Where a loaded component came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompileSource {
    /// Loaded from a verified artifact on disk.
    Cached,
    /// Compiled (no artifact yet, or caching is off).
    Compiled,
    /// An artifact existed but failed verification or loading; it was compiled again and
    /// replaced.
    Recompiled,
}

/// A directory of compiled artifacts, authenticated with a key kept beside them.
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl ArtifactCache {
    /// Opens (creating if needed, mode 0700) the cache directory and its key. A directory or
    /// key another user could write is refused: whoever can plant both a key and an artifact
    /// there could run native code in this process.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let io = |error: std::io::Error| Error::Cache {
            path: dir.to_path_buf(),
            error,
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io)?;
        private(dir).map_err(io)?;
        let key = read_or_create_key(&dir.join(KEY_FILE)).map_err(io)?;
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// Loads the component compiled for `engine`, compiling and storing it on a miss.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        metering: Metering,
        digest: &str,
        wasm: &[u8],
    ) -> Result<(Component, CompileSource), Error> {
        let name = artifact_name(engine, metering, digest);
        let path = self.dir.join(&name);
        let source = match std::fs::read(&path) {
            Ok(bytes) => match self
                .verified(&name, &bytes)
                .map(|body| deserialize(engine, body))
            {
                Some(Ok(component)) => return Ok((component, CompileSource::Cached)),
                Some(Err(error)) => {
                    tracing::warn!(path = %path.display(), %error, "compiled artifact failed to load; recompiling");
                    CompileSource::Recompiled
                }
                None => {
                    tracing::warn!(path = %path.display(), "compiled artifact failed its integrity check; recompiling");
                    CompileSource::Recompiled
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => CompileSource::Compiled,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "compiled artifact unreadable; recompiling");
                CompileSource::Recompiled
            }
        };
        let body = engine.precompile_component(wasm).map_err(Error::compile)?;
        if let Err(error) = self.store(&name, &path, &body) {
            // A read-only or full cache only costs a recompile next time.
            tracing::warn!(path = %path.display(), %error, "could not store compiled artifact");
        }
        let component = deserialize(engine, &body).map_err(Error::compile)?;
        Ok((component, source))
    }

    /// The artifact body if the file is ours and unmodified.
    fn verified<'a>(&self, name: &str, file: &'a [u8]) -> Option<&'a [u8]> {
        let rest = file.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < TAG_LEN {
            return None;
        }
        let (tag, body) = rest.split_at(TAG_LEN);
        let expected = hmac(&self.key, &[name.as_bytes(), body]);
        constant_time_eq(tag, &expected).then_some(body)
    }

    fn store(&self, name: &str, path: &Path, body: &[u8]) -> std::io::Result<()> {
        let tag = hmac(&self.key, &[name.as_bytes(), body]);
        // Write then rename, so a concurrent reader sees the old file or the whole new one.
        let temporary = self
            .dir
            .join(format!("{name}.{}.tmp", uuid::Uuid::new_v4()));
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(MAGIC)?;
        file.write_all(&tag)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }
}

/// Compiles without a disk cache.
pub(crate) fn compile(engine: &Engine, wasm: &[u8]) -> Result<(Component, CompileSource), Error> {
    let component = Component::new(engine, wasm).map_err(Error::compile)?;
    Ok((component, CompileSource::Compiled))
}

/// `<digest>-<metering>-<engine compatibility hash>.cwasm`: an artifact from another wasmtime
/// version or engine configuration has another name and is never even opened.
fn artifact_name(engine: &Engine, metering: Metering, digest: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!(
        "{digest}-{}-{:016x}.cwasm",
        metering.as_str(),
        hasher.finish()
    )
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, body: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `body` is either the output of `precompile_component` from this process or bytes
    // whose HMAC under this cache's secret key verified, i.e. an artifact this host wrote.
    // wasmtime itself rejects artifacts from other versions or engine configurations.
    unsafe { Component::deserialize(engine, body) }
}

/// Fails unless `path` belongs to this process's user and no one else may write it.
#[cfg(unix)]
fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    // The owner of /proc/self is the process's effective user: no libc call needed.
    let me = std::fs::metadata("/proc/self").map(|own| own.uid()).ok();
    if me.is_some_and(|uid| uid != metadata.uid()) {
        return Err(std::io::Error::other(format!(
            "{} belongs to another user; use a cache directory of your own (--cache-dir)",
            path.display()
        )));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} can be written by other users; make it private (chmod go-w) or use another --cache-dir",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

fn read_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        private(path)?;
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|error| std::io::Error::other(error.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let temporary = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4()));
    options.open(&temporary)?.write_all(&key)?;
    // If another process created a key at the same time, the later rename wins and the loser's
    // artifacts simply fail verification once and are recompiled.
    std::fs::rename(&temporary, path)?;
    Ok(key)
}

/// HMAC-SHA-256 (RFC 2104) over the concatenation of `parts`.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut inner_pad = [0x36u8; 64];
    let mut outer_pad = [0x5cu8; 64];
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let mut inner = Sha256::new();
    inner.update(inner_pad);
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(outer_pad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_shape() {
        // RFC 4231 test case 2 uses a short key; ours is always 32 bytes, so check the
        // construction against a key padded the same way HMAC pads it.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = hmac(&key, &[b"what do ya want ", b"for nothing?"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    #[cfg(unix)]
    fn a_cache_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let error = ArtifactCache::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("can be written by other users"), "{error}");
    }

    #[test]
    fn tampered_artifacts_fail_verification() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cache = ArtifactCache::open(dir.path()).expect("cache opens");
        let body = b"compiled code";
        let tag = hmac(&cache.key, &[b"a.cwasm", body]);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&tag);
        file.extend_from_slice(body);
        assert_eq!(cache.verified("a.cwasm", &file), Some(&body[..]));
        assert_eq!(cache.verified("b.cwasm", &file), None, "bound to its name");
        let last = file.len() - 1;
        file[last] ^= 1;
        assert_eq!(
            cache.verified("a.cwasm", &file),
            None,
            "bound to its contents"
        );
        assert_eq!(cache.verified("a.cwasm", &file[..20]), None, "truncated");
    }
}
