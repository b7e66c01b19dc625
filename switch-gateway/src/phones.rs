//! The desk phones this gateway serves, as last told by the cloud, with a copy on disk so
//! phones can register and local calls connect while the cloud is unreachable (even across a
//! gateway restart); and the files of the state directory (this list, the registrar's saved
//! bindings).

use std::collections::HashMap;
use std::path::Path;

use trunkline_protocol::PhoneEntry;

use crate::registrar::SavedRegistrations;

/// The phone list the core works with: in memory only. Its disk copy is read by the driver at
/// start ([`Phones::load`]) and written by the driver when the core asks
/// ([`crate::b2bua::Output::SavePhones`], [`save`]), so the core never blocks on a file.
pub struct Phones {
    realm: String,
    by_number: HashMap<String, PhoneEntry>,
    /// A list has been read from disk or received from the cloud. Until then the gateway
    /// cannot tell a wrong password from a phone it has not been told about yet.
    loaded: bool,
}

/// The list as saved in `state_dir/phones.json`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhoneList {
    pub realm: String,
    pub phones: Vec<PhoneEntry>,
}

// The verifiers are password-equivalent: never in a log line or a test failure.
impl std::fmt::Debug for PhoneList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneList").field("realm", &self.realm).field("phones", &self.phones.len()).finish()
    }
}

const FILE: &str = "phones.json";

impl Phones {
    /// No list yet (a new gateway that has not heard from its cloud).
    pub fn empty() -> Phones {
        Phones { realm: "trunkline".into(), by_number: HashMap::new(), loaded: false }
    }

    /// A known list (the disk copy, or a test's).
    pub fn from_list(list: PhoneList) -> Phones {
        Phones { realm: list.realm, by_number: list.phones.into_iter().map(|e| (e.number.clone(), e)).collect(), loaded: true }
    }

    /// Load the local copy from `state_dir` (empty if there is none yet or it is unreadable).
    /// Driver side: reads a file.
    pub fn load(state_dir: &Path) -> Phones {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<PhoneList>(&bytes) {
                Ok(list) => {
                    tracing::info!(count = list.phones.len(), path = %path.display(), "loaded local phone list");
                    return Phones::from_list(list);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable local phone list"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read local phone list"),
        }
        Phones::empty()
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
    /// left it. The caller saves [`Phones::snapshot`].
    pub fn replace(&mut self, realm: Option<&str>, phones: Vec<PhoneEntry>) -> Vec<String> {
        if let Some(r) = realm {
            self.realm = r.to_string();
        }
        let new: HashMap<String, PhoneEntry> = phones.into_iter().map(|e| (e.number.clone(), e)).collect();
        let gone: Vec<String> = self.by_number.keys().filter(|n| !new.contains_key(*n)).cloned().collect();
        self.by_number = new;
        self.loaded = true;
        gone
    }

    /// The list to save, sorted by number (a stable file).
    pub fn snapshot(&self) -> PhoneList {
        let mut phones: Vec<PhoneEntry> = self.by_number.values().cloned().collect();
        phones.sort_by(|a, b| a.number.cmp(&b.number));
        PhoneList { realm: self.realm.clone(), phones }
    }
}

/// Save `list` as `state_dir/phones.json` ([`write_private`]). Driver side: blocking file I/O,
/// run off the core's task.
pub fn save(state_dir: &Path, list: &PhoneList) -> std::io::Result<()> {
    write_private(state_dir, FILE, &serde_json::to_vec_pretty(list)?)
}

const REGISTRATIONS_FILE: &str = "registrations.json";

/// The registrar's bindings as the last process saved them (none if there is no copy or it is
/// unreadable: the phones then come back at their next REGISTER, as before). Driver side.
pub fn load_registrations(state_dir: &Path) -> SavedRegistrations {
    let path = state_dir.join(REGISTRATIONS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<SavedRegistrations>(&bytes) {
            Ok(saved) => return saved,
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable saved registrations"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read saved registrations"),
    }
    SavedRegistrations::default()
}

/// Save the registrar's bindings as `state_dir/registrations.json` (atomically, owner-only:
/// they say where every phone is). Driver side, off the core's task.
pub fn save_registrations(state_dir: &Path, saved: &SavedRegistrations) -> std::io::Result<()> {
    write_private(state_dir, REGISTRATIONS_FILE, &serde_json::to_vec(saved)?)
}

/// Write `state_dir/name` atomically (a temporary file, fsync, rename) and owner-only, so a
/// crash mid-write leaves the previous copy.
fn write_private(state_dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(name);
    let tmp = path.with_extension("json.tmp");
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
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)
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
        assert!(p.is_empty() && !p.is_loaded());
        assert!(p.replace(Some("corp"), vec![entry("1001"), entry("1002")]).is_empty());
        save(dir.path(), &p.snapshot()).unwrap();
        let mut again = Phones::load(dir.path());
        assert_eq!((again.len(), again.realm(), again.is_loaded()), (2, "corp", true));
        assert_eq!(again.replace(None, vec![entry("1001")]), vec!["1002".to_string()]);
        save(dir.path(), &again.snapshot()).unwrap();
        assert!(Phones::load(dir.path()).contains("1001"));
        assert!(!Phones::load(dir.path()).contains("1002"));
    }

    #[test]
    fn a_corrupt_copy_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("phones.json"), b"{not json").unwrap();
        assert!(Phones::load(dir.path()).is_empty());
        assert!(!Phones::load(dir.path()).is_loaded());
    }
}
