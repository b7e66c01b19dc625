//! The desk phones this gateway serves, as last told by the cloud, with a copy on disk so
//! phones can register and local calls connect while the cloud is unreachable (even across a
//! gateway restart).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use trunkline_protocol::PhoneEntry;

pub struct Phones {
    path: PathBuf,
    realm: String,
    by_number: HashMap<String, PhoneEntry>,
    /// A list has been read from disk or received from the cloud. Until then the gateway
    /// cannot tell a wrong password from a phone it has not been told about yet.
    loaded: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    realm: String,
    phones: Vec<PhoneEntry>,
}

impl Phones {
    /// Load the local copy from `state_dir` (empty if there is none yet or it is unreadable).
    pub fn load(state_dir: &Path) -> Phones {
        let path = state_dir.join("phones.json");
        let mut p = Phones { path, realm: "trunkline".into(), by_number: HashMap::new(), loaded: false };
        match std::fs::read(&p.path) {
            Ok(bytes) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(d) => {
                    p.realm = d.realm;
                    p.by_number = d.phones.into_iter().map(|e| (e.number.clone(), e)).collect();
                    p.loaded = true;
                    tracing::info!(count = p.by_number.len(), path = %p.path.display(), "loaded local phone list");
                }
                Err(e) => tracing::warn!(path = %p.path.display(), error = %e, "ignoring unreadable local phone list"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %p.path.display(), error = %e, "cannot read local phone list"),
        }
        p
    }

    /// Whether any phone list is known (from disk or the cloud), even an empty one.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn get(&self, number: &str) -> Option<&PhoneEntry> {
        self.by_number.get(number)
    }

    pub fn contains(&self, number: &str) -> bool {
        self.by_number.contains_key(number)
    }

    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }

    /// Replace the list (from `switch_welcome` / `phones_update`); returns the numbers that
    /// left it, and saves the new list atomically.
    pub fn replace(&mut self, realm: Option<&str>, phones: Vec<PhoneEntry>) -> Vec<String> {
        if let Some(r) = realm {
            self.realm = r.to_string();
        }
        let new: HashMap<String, PhoneEntry> = phones.into_iter().map(|e| (e.number.clone(), e)).collect();
        let gone: Vec<String> = self.by_number.keys().filter(|n| !new.contains_key(*n)).cloned().collect();
        self.by_number = new;
        self.loaded = true;
        if let Err(e) = self.save() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save local phone list");
        }
        gone
    }

    fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut phones: Vec<PhoneEntry> = self.by_number.values().cloned().collect();
        phones.sort_by(|a, b| a.number.cmp(&b.number));
        let data = serde_json::to_vec_pretty(&OnDisk { realm: self.realm.clone(), phones })?;
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            // Digest verifiers are password-equivalent for SIP: owner-only.
            #[cfg(unix)]
            opts.mode(0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: &str) -> PhoneEntry {
        PhoneEntry { number: n.into(), display_name: n.into(), ha1_md5: "m".into(), ha1_sha256: "s".into() }
    }

    #[test]
    fn list_survives_a_restart_and_reports_removed_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Phones::load(dir.path());
        assert!(p.is_empty());
        assert!(p.replace(Some("corp"), vec![entry("1001"), entry("1002")]).is_empty());
        let mut again = Phones::load(dir.path());
        assert_eq!((again.len(), again.realm()), (2, "corp"));
        assert_eq!(again.replace(None, vec![entry("1001")]), vec!["1002".to_string()]);
        assert!(Phones::load(dir.path()).contains("1001"));
    }

    #[test]
    fn a_corrupt_copy_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("phones.json"), b"{not json").unwrap();
        assert!(Phones::load(dir.path()).is_empty());
    }
}
