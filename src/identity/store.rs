//! [`CredentialStore`]: crash-safe on-disk slots for a device's credentials.
//!
//! # Layout
//!
//! ```text
//! <dir>/                 0700
//!   state                0600  which generation each slot holds (`active=gen-…` lines)
//!   lock                 0600  flock(2) target that serialises writers across processes
//!   gen-<16 hex>/        0700  one immutable credential:
//!     kind               0600    `x509`, `jwt` or `symmetric`
//!     chain.pem          0600    X.509 only: certificates, leaf first
//!     key.pem            0600    X.509 and JWT: PKCS#8 PEM private key
//!     symmetric.key      0600    symmetric only: base64
//! ```
//!
//! # Why a crash at any point leaves a working credential
//!
//! Generation directories are never modified once named: a new one is written completely under a
//! `.tmp` name (each file fsynced, then the directory), renamed into place and the rename fsynced
//! *before* `state` mentions it. Every slot transition is then exactly one atomic replacement of
//! `state` (write `state.tmp`, fsync, rename, fsync the directory), so after a crash `state` is
//! either the old or the new one and only ever names complete generations. Generations that the
//! new `state` drops are deleted only after it is durable. Anything else (`*.tmp`, generations no
//! state names) is debris of an interrupted operation and is removed by [`CredentialStore::open`]
//! and at the start of every later change.
//!
//! The store is Unix-only (file modes and `fsync` on directories).

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use super::{Credentials, Signer, SoftwareKey, SymmetricKey, X509Credential};
use crate::fsutil::{sync_dir, write_file, write_new_file};
use crate::{Error, Result};

const STATE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const LOCK: &str = "lock";
const GEN_PREFIX: &str = "gen-";
const GEN_HEX_LEN: usize = 16;
const TMP_SUFFIX: &str = ".tmp";
const KIND: &str = "kind";
const CHAIN: &str = "chain.pem";
const KEY: &str = "key.pem";
const SYMMETRIC: &str = "symmetric.key";
/// The `state` format this code reads and writes; a newer one is refused rather than misread.
const FORMAT_VERSION: &str = "1";
/// Field named by errors about the `state` file.
const STATE_FIELD: &str = "credential store state";

/// One of the three places a [`CredentialStore`] keeps a credential.
///
/// A rotation goes *stage* (new credential into [`Pending`](Slot::Pending)) → test it →
/// *commit* (pending becomes [`Active`](Slot::Active), the old active becomes
/// [`Previous`](Slot::Previous)), with *rollback* and *revert* as the ways back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The credential the device connects with.
    Active,
    /// A staged credential waiting to be tested and committed.
    Pending,
    /// The credential active before the last commit, kept so a bad commit can be reverted.
    Previous,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Active => "active",
            Slot::Pending => "pending",
            Slot::Previous => "previous",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Crash-safe on-disk storage for a device's credentials, in three [`Slot`]s.
///
/// Every change (stage, commit, rollback, revert) is atomic: if the process or the machine dies
/// at any point, the next [`open`](CredentialStore::open) finds either the state before the
/// change or the state after it, never a mix, and the active credential still loads. Private-key
/// files are created with mode 0600, directories 0700. Writers in different processes are
/// serialised with a lock file.
///
/// On disk, each credential is an immutable `gen-<random>/` directory (`chain.pem` and `key.pem`
/// for X.509, `key.pem` for a JWT key, `symmetric.key` for a symmetric key), and a small `state`
/// file names the generation in each slot; a change writes the new generation completely, then
/// atomically replaces `state`. Keys are stored as PKCS#8 PEM, so only signers that can export
/// their key ([`Signer::export_pkcs8_der`]) can be stored; hardware keys stay in their hardware.
/// The store is Unix-only.
///
/// ```
/// use fleetkit::identity::{CredentialStore, Credentials, Slot, SymmetricKey};
///
/// let tmp = tempfile::tempdir()?;
/// let store = CredentialStore::open(tmp.path().join("credentials"))?;
///
/// // First provisioning: stage, then commit.
/// let key = SymmetricKey::from_base64("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=")?;
/// store.stage(&Credentials::SymmetricKey(key.clone()))?;
/// store.commit()?;
///
/// // A later process finds it again.
/// let store = CredentialStore::open(tmp.path().join("credentials"))?;
/// match store.load()? {
///     Credentials::SymmetricKey(loaded) => assert_eq!(loaded, key),
///     other => panic!("unexpected {other:?}"),
/// }
/// assert!(store.load_slot(Slot::Pending)?.is_none());
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub struct CredentialStore {
    dir: PathBuf,
    #[cfg(test)]
    fail: std::sync::Mutex<FailPoints>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// Opens the store in `dir`, creating the directory (mode 0700) if it is missing.
    ///
    /// Removes what an interrupted operation left behind (temporary files, generations no slot
    /// refers to). An existing directory's permissions are left as they are.
    ///
    /// Fails with [`Error::InvalidInput`] (field `credential store state`) if the `state` file is
    /// corrupt, without touching anything, and with [`Error::NotSupported`] if it was written by
    /// a newer, incompatible version of fleetkit.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let existed = dir.is_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        if !existed {
            // Make the new directory's own name durable, or a power cut could lose the store.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let store = CredentialStore {
            dir,
            #[cfg(test)]
            fail: Default::default(),
        };
        let _lock = store.lock(true)?;
        store.recover()?;
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The active credential.
    ///
    /// Fails with [`Error::NotFound`] (`what` = `"active credential"`) if nothing was ever
    /// committed, and with [`Error::InvalidInput`] naming the slot (field `active credential`)
    /// if its files are damaged or its key does not belong to its certificate.
    pub fn load(&self) -> Result<Credentials> {
        self.load_slot(Slot::Active)?
            .ok_or_else(|| Error::NotFound {
                what: "active credential",
                id: self.dir.display().to_string(),
            })
    }

    /// The credential in `slot`, or `None` if the slot is empty.
    ///
    /// Damaged files are reported as [`Error::InvalidInput`] with field `"<slot> credential"`.
    pub fn load_slot(&self, slot: Slot) -> Result<Option<Credentials>> {
        // Shared lock: a concurrent writer may delete the generation we are about to read.
        let _lock = self.lock(false)?;
        let state = self.read_state()?;
        state
            .get(slot)
            .map(|generation| self.read_generation(slot, generation))
            .transpose()
    }

    /// Writes `credentials` into the pending slot, replacing what was pending.
    ///
    /// The key is exported and checked before anything is written: a signer that cannot export
    /// its key fails with its [`Error::NotSupported`] and leaves the store unchanged.
    pub fn stage(&self, credentials: &Credentials) -> Result<()> {
        let files = encode(credentials)?;
        let _lock = self.lock(true)?;
        let old = self.recover()?;
        let generation = self.write_generation(&files)?;
        let new = State {
            pending: Some(generation),
            ..old.clone()
        };
        self.switch(&old, &new)
    }

    /// Makes the pending credential active; the active one becomes previous and the old previous
    /// is deleted.
    ///
    /// Also works when nothing is active yet (first provisioning). Fails with
    /// [`Error::Precondition`], changing nothing, if nothing is pending.
    pub fn commit(&self) -> Result<()> {
        let _lock = self.lock(true)?;
        let old = self.recover()?;
        let Some(pending) = old.pending.clone() else {
            return Err(Error::Precondition(
                "no pending credential to commit: stage one first".into(),
            ));
        };
        let new = State {
            active: Some(pending),
            pending: None,
            // With nothing active (first provisioning) there is nothing to demote; keep previous.
            previous: old.active.clone().or_else(|| old.previous.clone()),
        };
        self.switch(&old, &new)
    }

    /// Discards the pending credential, leaving the active one untouched.
    ///
    /// Fails with [`Error::Precondition`], changing nothing, if nothing is pending.
    pub fn rollback(&self) -> Result<()> {
        let _lock = self.lock(true)?;
        let old = self.recover()?;
        if old.pending.is_none() {
            return Err(Error::Precondition(
                "no pending credential to roll back".into(),
            ));
        }
        let new = State {
            pending: None,
            ..old.clone()
        };
        self.switch(&old, &new)
    }

    /// Undoes a commit that proved bad: the previous credential becomes active again and the bad
    /// active one is deleted. A pending credential is left as it is.
    ///
    /// Fails with [`Error::Precondition`], changing nothing, if there is no previous credential.
    pub fn revert(&self) -> Result<()> {
        let _lock = self.lock(true)?;
        let old = self.recover()?;
        let Some(previous) = old.previous.clone() else {
            return Err(Error::Precondition(
                "no previous credential to revert to".into(),
            ));
        };
        let new = State {
            active: Some(previous),
            pending: old.pending.clone(),
            previous: None,
        };
        self.switch(&old, &new)
    }

    // ---- internals -------------------------------------------------------------------------

    /// Opens and locks `<dir>/lock`. A fresh open per call gives each call its own open file
    /// description, so the flock also excludes other threads of this process.
    fn lock(&self, exclusive: bool) -> Result<File> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }

    fn read_state(&self) -> Result<State> {
        let path = self.dir.join(STATE);
        match fs::read(&path) {
            Ok(bytes) => State::parse(&bytes),
            // Never written: nothing was ever staged.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Deletes debris of interrupted operations. Caller holds the exclusive lock, so no other
    /// operation is in flight and every temporary file is garbage. Only names this store
    /// creates are touched.
    fn recover(&self) -> Result<State> {
        let state = self.read_state()?;
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let garbage = name == STATE_TMP
                || name
                    .strip_suffix(TMP_SUFFIX)
                    .is_some_and(is_generation_name)
                || (is_generation_name(name) && !state.references(name));
            if garbage {
                remove_path(&entry.path())?;
            }
        }
        Ok(state)
    }

    /// Writes a complete, durable generation and returns its name.
    fn write_generation(&self, files: &GenerationFiles) -> Result<String> {
        let name = self.fresh_generation_name()?;
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        self.step(Step::CreatedGenDir)?;
        for (file, bytes) in files {
            write_new_file(&tmp.join(file), bytes)?;
            self.step(Step::WroteGenFile)?;
        }
        sync_dir(&tmp)?;
        self.step(Step::SyncedGenDir)?;
        let path = self.dir.join(&name);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.step(Step::RenamedGen)?;
        // The rename must be durable before a durable `state` can name it.
        sync_dir(&self.dir)?;
        self.step(Step::SyncedGenRename)?;
        Ok(name)
    }

    fn fresh_generation_name(&self) -> Result<String> {
        let rng = SystemRandom::new();
        for _ in 0..8 {
            let mut bytes = [0u8; GEN_HEX_LEN / 2];
            rng.fill(&mut bytes)
                .map_err(|_| Error::Crypto("the system random source failed".into()))?;
            let name: String = std::iter::once(GEN_PREFIX.to_owned())
                .chain(bytes.iter().map(|b| format!("{b:02x}")))
                .collect();
            let taken = self.dir.join(&name).exists()
                || self.dir.join(format!("{name}{TMP_SUFFIX}")).exists();
            if !taken {
                return Ok(name);
            }
        }
        Err(Error::Crypto(
            "could not pick an unused generation name: the random source repeats".into(),
        ))
    }

    /// The single commit point: atomically replaces `state` with `new`, then deletes the
    /// generations `old` had and `new` no longer names.
    fn switch(&self, old: &State, new: &State) -> Result<()> {
        let tmp = self.dir.join(STATE_TMP);
        write_file(&tmp, new.render().as_bytes(), false)?;
        self.step(Step::WroteStateTmp)?;
        let path = self.dir.join(STATE);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.step(Step::RenamedState)?;
        sync_dir(&self.dir)?;
        self.step(Step::SyncedStateDir)?;
        for generation in old.generations() {
            if !new.references(generation) {
                // The change is already durable, so failing the call here would lie about it.
                // A generation that resists deletion is retried by the next recovery.
                let _ = remove_path(&self.dir.join(generation));
                self.step(Step::DeletedOldGen)?;
            }
        }
        Ok(())
    }

    fn read_generation(&self, slot: Slot, generation: &str) -> Result<Credentials> {
        let dir = self.dir.join(generation);
        let damaged = |what: &str, reason: &dyn fmt::Display| {
            Error::invalid(
                format!("{slot} credential"),
                format!("{}: {what}: {reason}", dir.display()),
            )
        };
        let read = |file: &str| -> Result<Zeroizing<String>> {
            let path = dir.join(file);
            let bytes = match fs::read(&path) {
                Ok(bytes) => Zeroizing::new(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(damaged(file, &"missing"));
                }
                Err(e) => return Err(Error::io(path, e)),
            };
            match std::str::from_utf8(&bytes) {
                Ok(text) => Ok(Zeroizing::new(text.to_owned())),
                Err(_) => Err(damaged(file, &"not UTF-8 text")),
            }
        };
        let key = |pem: &str| -> Result<Arc<dyn Signer>> {
            SoftwareKey::from_pem(pem)
                .map(|k| Arc::new(k) as Arc<dyn Signer>)
                .map_err(|e| damaged(KEY, &e))
        };
        let kind = read(KIND)?;
        match kind.trim() {
            "x509" => {
                let signer = key(&read(KEY)?)?;
                let chain = read(CHAIN)?;
                X509Credential::from_pem(&chain, signer)
                    .map(Credentials::X509)
                    .map_err(|e| damaged("chain.pem with key.pem", &e))
            }
            "jwt" => Ok(Credentials::JwtKey(key(&read(KEY)?)?)),
            "symmetric" => SymmetricKey::from_base64(&read(SYMMETRIC)?)
                .map(Credentials::SymmetricKey)
                .map_err(|e| damaged(SYMMETRIC, &e)),
            other => Err(damaged(KIND, &format!("unknown kind {other:?}"))),
        }
    }

    /// Marks the end of one durable step. Tests make it fail to simulate the process dying right
    /// there; otherwise it does nothing.
    #[cfg_attr(not(test), inline(always))]
    fn step(&self, step: Step) -> Result<()> {
        #[cfg(test)]
        {
            self.fail.lock().expect("fail points poisoned").hit(step)
        }
        #[cfg(not(test))]
        {
            let _ = step;
            Ok(())
        }
    }
}

/// The files of one generation: name and contents (secret, hence zeroized).
type GenerationFiles = Vec<(&'static str, Zeroizing<Vec<u8>>)>;

/// Serialises a credential into the files of a generation, validating it first so that nothing
/// is written for a credential the store could not load back.
fn encode(credentials: &Credentials) -> Result<GenerationFiles> {
    let text = |s: &str| Zeroizing::new(s.as_bytes().to_vec());
    Ok(match credentials {
        Credentials::X509(x509) => vec![
            (KIND, text("x509\n")),
            (KEY, export_key(x509.signer().as_ref())?),
            (CHAIN, text(&x509.chain_pem())),
        ],
        Credentials::JwtKey(signer) => {
            vec![(KIND, text("jwt\n")), (KEY, export_key(signer.as_ref())?)]
        }
        Credentials::SymmetricKey(key) => vec![
            (KIND, text("symmetric\n")),
            (
                SYMMETRIC,
                Zeroizing::new(key.to_base64().as_bytes().to_vec()),
            ),
        ],
    })
}

/// The signer's key as PKCS#8 PEM, after checking it re-imports as the same key.
fn export_key(signer: &dyn Signer) -> Result<Zeroizing<Vec<u8>>> {
    let der = signer.export_pkcs8_der()?;
    let reimported = SoftwareKey::from_pkcs8_der(&der)?;
    if reimported.public_key_spki() != signer.public_key_spki() {
        return Err(Error::invalid(
            "private key",
            "the signer exported a key that is not its own",
        ));
    }
    Ok(Zeroizing::new(
        super::pem_encode("PRIVATE KEY", &der).into_bytes(),
    ))
}

fn remove_path(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// `gen-` followed by exactly 16 lowercase hex digits; anything else is not ours (and cannot
/// smuggle a path such as `../x` through the state file).
fn is_generation_name(name: &str) -> bool {
    name.strip_prefix(GEN_PREFIX).is_some_and(|hex| {
        hex.len() == GEN_HEX_LEN
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The contents of the `state` file: the generation in each slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    active: Option<String>,
    pending: Option<String>,
    previous: Option<String>,
}

impl State {
    fn get(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::Active => self.active.as_deref(),
            Slot::Pending => self.pending.as_deref(),
            Slot::Previous => self.previous.as_deref(),
        }
    }

    fn generations(&self) -> impl Iterator<Item = &str> {
        [&self.active, &self.pending, &self.previous]
            .into_iter()
            .filter_map(|g| g.as_deref())
    }

    fn references(&self, generation: &str) -> bool {
        self.generations().any(|g| g == generation)
    }

    fn render(&self) -> String {
        let mut out = format!("version={FORMAT_VERSION}\n");
        for (key, value) in [
            ("active", &self.active),
            ("pending", &self.pending),
            ("previous", &self.previous),
        ] {
            if let Some(generation) = value {
                out.push_str(&format!("{key}={generation}\n"));
            }
        }
        out
    }

    /// Strict: anything unexpected is an error, never an empty store, because treating a damaged
    /// file as empty would let the next `open` delete every credential.
    fn parse(bytes: &[u8]) -> Result<State> {
        let bad = |reason: String| Error::invalid(STATE_FIELD, reason);
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let mut state = State::default();
        let mut version = None;
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(format!("line {number}: expected key=value")));
            };
            let slot = match key {
                "version" => {
                    if version.replace(value).is_some() {
                        return Err(bad(format!("line {number}: version given twice")));
                    }
                    continue;
                }
                "active" => &mut state.active,
                "pending" => &mut state.pending,
                "previous" => &mut state.previous,
                other => return Err(bad(format!("line {number}: unknown slot {other:?}"))),
            };
            if !is_generation_name(value) {
                return Err(bad(format!(
                    "line {number}: {value:?} is not a generation name"
                )));
            }
            if slot.replace(value.to_owned()).is_some() {
                return Err(bad(format!("line {number}: slot {key} given twice")));
            }
        }
        match version {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(Error::NotSupported(format!(
                    "credential store format version {other:?} (this fleetkit reads version \
                     {FORMAT_VERSION})"
                )));
            }
            None => return Err(bad("no version line".into())),
        }
        let generations: Vec<&str> = state.generations().collect();
        if (1..generations.len()).any(|i| generations[..i].contains(&generations[i])) {
            return Err(bad("one generation is named by two slots".into()));
        }
        Ok(state)
    }
}

/// Declares [`Step`] and, for tests, `Step::ALL`, from one list so neither can miss a step.
macro_rules! steps {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// A durable step of a store operation, after which a crash can be simulated in tests.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Step {
            $($(#[doc = $doc])* $name,)*
        }

        #[cfg(test)]
        impl Step {
            const ALL: &[Step] = &[$(Step::$name,)*];
        }
    };
}

steps! {
    /// `gen-….tmp/` created, still empty.
    CreatedGenDir,
    /// One file of the generation written and fsynced (once per file).
    WroteGenFile,
    /// The `.tmp` generation directory fsynced.
    SyncedGenDir,
    /// `gen-….tmp` renamed to `gen-…`.
    RenamedGen,
    /// The store directory fsynced after that rename.
    SyncedGenRename,
    /// `state.tmp` written and fsynced.
    WroteStateTmp,
    /// `state.tmp` renamed over `state`: the commit point.
    RenamedState,
    /// The store directory fsynced after that rename.
    SyncedStateDir,
    /// A generation the new state no longer names deleted (once per generation).
    DeletedOldGen,
}

/// Test-only crash injection: `crash_at = (step, n)` fails the `n`-th time `step` is reached.
#[cfg(test)]
#[derive(Default)]
struct FailPoints {
    crash_at: Option<(Step, usize)>,
    seen: Vec<Step>,
}

#[cfg(test)]
impl FailPoints {
    fn hit(&mut self, step: Step) -> Result<()> {
        self.seen.push(step);
        let occurrence = self.seen.iter().filter(|s| **s == step).count();
        if self.crash_at == Some((step, occurrence)) {
            // Return without touching anything: the file system stays as a dead process left it.
            return Err(Error::Io {
                path: None,
                source: io::Error::other(format!("simulated crash after {step:?} #{occurrence}")),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::PermissionsExt as _;

    use rustls_pki_types::CertificateDer;
    use tempfile::TempDir;

    use super::*;
    use crate::identity::{KeyAlgorithm, RcgenKey, SignatureScheme};

    // ---- helpers -----------------------------------------------------------------------------

    impl CredentialStore {
        /// Arms (or disarms) the crash and forgets the steps seen so far.
        fn arm(&self, crash_at: Option<(Step, usize)>) {
            let mut fail = self.fail.lock().unwrap();
            fail.crash_at = crash_at;
            fail.seen.clear();
        }

        fn trace(&self) -> Vec<Step> {
            self.fail.lock().unwrap().seen.clone()
        }
    }

    fn x509(common_name: &str) -> Credentials {
        let key = Arc::new(SoftwareKey::generate_p256().unwrap());
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params
            .self_signed(&RcgenKey::new(key.clone()).unwrap())
            .unwrap();
        Credentials::X509(X509Credential::new(vec![cert.der().clone()], key).unwrap())
    }

    fn jwt_key() -> Credentials {
        Credentials::JwtKey(Arc::new(SoftwareKey::generate_p256().unwrap()))
    }

    fn symmetric() -> Credentials {
        Credentials::SymmetricKey(SymmetricKey::new(*b"0123456789abcdef0123456789abcdef").unwrap())
    }

    /// What a credential *is*: for X.509 the leaf DER and the key's SPKI, both, so a mix of an
    /// old certificate with a new key (or vice versa) can never compare equal to either.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Id {
        X509 { leaf: Vec<u8>, spki: Vec<u8> },
        Jwt(Vec<u8>),
        Symmetric(Vec<u8>),
    }

    /// Identifies `c`, asserting on the way that an X.509 key really belongs to its certificate:
    /// a signature by the key verifies under the certificate's public key.
    fn id(c: &Credentials) -> Id {
        match c {
            Credentials::X509(x) => {
                let leaf = x.chain()[0].as_ref().to_vec();
                let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
                assert_eq!(
                    cert.public_key().raw,
                    x.signer().public_key_spki(),
                    "key does not match certificate"
                );
                let sig = x
                    .signer()
                    .sign(SignatureScheme::EcdsaP256Sha256, b"probe")
                    .unwrap();
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_ASN1,
                    cert.public_key().subject_public_key.data.as_ref(),
                )
                .verify(b"probe", &sig)
                .expect("the key's signature verifies under the certificate");
                Id::X509 {
                    leaf,
                    spki: x.signer().public_key_spki().to_vec(),
                }
            }
            Credentials::JwtKey(s) => Id::Jwt(s.public_key_spki().to_vec()),
            Credentials::SymmetricKey(k) => Id::Symmetric(k.expose_secret().to_vec()),
        }
    }

    /// The identities in (active, pending, previous).
    type Ids = [Option<Id>; 3];

    fn ids(store: &CredentialStore) -> Ids {
        [Slot::Active, Slot::Pending, Slot::Previous]
            .map(|slot| store.load_slot(slot).unwrap().as_ref().map(id))
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file and directory under `dir` with its mode and (for files) its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
        let mut out = BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                if path.is_dir() {
                    out.insert(rel, (mode(&path), None));
                    todo.push(path);
                } else {
                    out.insert(rel, (mode(&path), Some(fs::read(&path).unwrap())));
                }
            }
        }
        out
    }

    /// Asserts the directory holds exactly `state`, `lock` and the generations `state` names.
    fn assert_no_leftovers(store: &CredentialStore) {
        let state = store.read_state().unwrap();
        let mut expected: BTreeSet<String> = state.generations().map(str::to_owned).collect();
        expected.insert(LOCK.into());
        if store.dir.join(STATE).exists() {
            expected.insert(STATE.into());
        }
        let found: BTreeSet<String> = fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(found, expected, "unexpected entries in the store directory");
    }

    fn new_store() -> (TempDir, CredentialStore) {
        let tmp = TempDir::new().unwrap();
        let store = CredentialStore::open(tmp.path().join("store")).unwrap();
        (tmp, store)
    }

    fn active_generation(store: &CredentialStore) -> PathBuf {
        store.dir.join(
            store
                .read_state()
                .unwrap()
                .active
                .expect("an active generation"),
        )
    }

    // ---- round trips -------------------------------------------------------------------------

    fn round_trip(credentials: Credentials) -> (TempDir, CredentialStore) {
        let (tmp, store) = new_store();
        store.stage(&credentials).unwrap();
        assert_eq!(
            store.load_slot(Slot::Pending).unwrap().as_ref().map(id),
            Some(id(&credentials))
        );
        store.commit().unwrap();
        // Through a fresh handle, as a restarted process would.
        let reopened = CredentialStore::open(store.dir()).unwrap();
        assert_eq!(id(&reopened.load().unwrap()), id(&credentials));
        assert_no_leftovers(&reopened);
        (tmp, reopened)
    }

    #[test]
    fn x509_round_trip_with_private_modes() {
        let (_tmp, store) = round_trip(x509("device-1"));
        let generation = active_generation(&store);
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&generation), 0o700);
        for file in [KEY, CHAIN, KIND] {
            assert_eq!(mode(&generation.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&store.dir().join(STATE)), 0o600);
        let pem = fs::read_to_string(generation.join(KEY)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    }

    #[test]
    fn jwt_key_round_trip() {
        let (_tmp, store) = round_trip(jwt_key());
        let generation = active_generation(&store);
        assert_eq!(mode(&generation.join(KEY)), 0o600);
        assert!(!generation.join(CHAIN).exists());
    }

    #[test]
    fn symmetric_key_round_trip() {
        let (_tmp, store) = round_trip(symmetric());
        let generation = active_generation(&store);
        assert_eq!(mode(&generation.join(SYMMETRIC)), 0o600);
    }

    #[test]
    fn open_creates_nested_directory_0700() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("a/b");
        let store = CredentialStore::open(&dir).unwrap();
        assert_eq!(store.dir(), dir);
        assert_eq!(mode(&dir), 0o700);
        assert!(matches!(
            store.load(),
            Err(Error::NotFound {
                what: "active credential",
                ..
            })
        ));
        assert!(store.load_slot(Slot::Previous).unwrap().is_none());
    }

    #[test]
    fn slots_move_as_documented() {
        let (_tmp, store) = new_store();
        let [a, b, c] = [x509("a"), x509("b"), x509("c")];
        let (ia, ib, ic) = (id(&a), id(&b), id(&c));

        store.stage(&a).unwrap();
        store.commit().unwrap(); // first provisioning: nothing to demote
        assert_eq!(ids(&store), [Some(ia.clone()), None, None]);

        store.stage(&c).unwrap();
        store.stage(&b).unwrap(); // replaces c, whose generation is deleted
        assert_eq!(ids(&store), [Some(ia.clone()), Some(ib.clone()), None]);
        assert_no_leftovers(&store);

        store.commit().unwrap();
        assert_eq!(ids(&store), [Some(ib.clone()), None, Some(ia.clone())]);

        store.stage(&c).unwrap();
        store.rollback().unwrap();
        assert_eq!(ids(&store), [Some(ib.clone()), None, Some(ia.clone())]);

        store.stage(&c).unwrap();
        store.commit().unwrap(); // a falls off the end
        assert_eq!(ids(&store), [Some(ic), None, Some(ib.clone())]);

        store.revert().unwrap(); // c proved bad
        assert_eq!(ids(&store), [Some(ib), None, None]);
        assert_no_leftovers(&store);
    }

    // ---- crash at every step -----------------------------------------------------------------

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Stage,
        Commit,
        FirstCommit,
        Rollback,
        Revert,
    }

    struct Fixture {
        _tmp: TempDir,
        store: CredentialStore,
        new: Credentials,
        before: Ids,
        after: Ids,
    }

    /// A store ready for `op`, with every slot the op reads or writes filled, so that every step
    /// (including deleting an old generation) happens.
    fn fixture(op: Op) -> Fixture {
        let (tmp, store) = new_store();
        let [a, p, q, n] = [x509("a"), x509("p"), x509("q"), x509("n")];
        let (ia, ip, iq, i_n) = (Some(id(&a)), Some(id(&p)), Some(id(&q)), Some(id(&n)));
        let (before, after) = match op {
            Op::Stage => {
                store.stage(&a).unwrap();
                store.commit().unwrap();
                store.stage(&p).unwrap();
                ([ia.clone(), ip, None], [ia, i_n, None])
            }
            Op::Commit => {
                store.stage(&q).unwrap();
                store.commit().unwrap();
                store.stage(&a).unwrap();
                store.commit().unwrap();
                store.stage(&n).unwrap();
                ([ia.clone(), i_n.clone(), iq], [i_n, None, ia])
            }
            Op::FirstCommit => {
                store.stage(&n).unwrap();
                ([None, i_n.clone(), None], [i_n, None, None])
            }
            Op::Rollback => {
                store.stage(&a).unwrap();
                store.commit().unwrap();
                store.stage(&n).unwrap();
                ([ia.clone(), i_n, None], [ia, None, None])
            }
            Op::Revert => {
                store.stage(&q).unwrap();
                store.commit().unwrap();
                store.stage(&a).unwrap();
                store.commit().unwrap();
                ([ia, None, iq.clone()], [iq, None, None])
            }
        };
        assert_eq!(ids(&store), before, "{op:?} fixture");
        Fixture {
            _tmp: tmp,
            store,
            new: n,
            before,
            after,
        }
    }

    fn run(op: Op, fx: &Fixture) -> Result<()> {
        match op {
            Op::Stage => fx.store.stage(&fx.new),
            Op::Commit | Op::FirstCommit => fx.store.commit(),
            Op::Rollback => fx.store.rollback(),
            Op::Revert => fx.store.revert(),
        }
    }

    /// The steps `op` goes through when nothing fails.
    fn trace_of(op: Op) -> Vec<Step> {
        let fx = fixture(op);
        fx.store.arm(None);
        run(op, &fx).unwrap();
        assert_eq!(ids(&fx.store), fx.after, "{op:?} without a crash");
        fx.store.trace()
    }

    /// Crashes `op` after each of its steps in turn, then checks what a restarted process sees:
    /// exactly the old slots (crash before the commit point) or exactly the new ones, a loadable
    /// active credential whose key matches its certificate, no debris, and a working store.
    fn crash_at_every_step(op: Op) {
        let trace = trace_of(op);
        assert!(trace.contains(&Step::RenamedState), "{op:?}: {trace:?}");
        for (i, &step) in trace.iter().enumerate() {
            let occurrence = trace[..=i].iter().filter(|s| **s == step).count();
            let fx = fixture(op);
            fx.store.arm(Some((step, occurrence)));
            let err = run(op, &fx).expect_err("the armed crash fires");
            assert!(
                err.to_string().contains("simulated crash"),
                "{op:?} at {step:?}: {err}"
            );
            let dir = fx.store.dir().to_path_buf();
            drop(fx.store); // the process is gone; only the files remain

            let store = CredentialStore::open(&dir).unwrap();
            let committed = trace[..=i].contains(&Step::RenamedState);
            let expected = if committed { &fx.after } else { &fx.before };
            let what = format!("{op:?} crashed after {step:?} #{occurrence}");
            assert_eq!(&ids(&store), expected, "{what}");
            match (&expected[0], store.load()) {
                (Some(want), Ok(got)) => assert_eq!(&id(&got), want, "{what}"),
                (None, Err(Error::NotFound { .. })) => {}
                (want, got) => panic!("{what}: wanted {want:?}, loaded {got:?}"),
            }
            assert_no_leftovers(&store);

            // The recovered store keeps working.
            let later = x509("later");
            store.stage(&later).unwrap();
            store.commit().unwrap();
            assert_eq!(id(&store.load().unwrap()), id(&later), "{what}");
            assert_no_leftovers(&store);
        }
    }

    #[test]
    fn crash_at_every_step_of_stage() {
        crash_at_every_step(Op::Stage);
    }

    #[test]
    fn crash_at_every_step_of_commit() {
        crash_at_every_step(Op::Commit);
    }

    #[test]
    fn crash_at_every_step_of_first_commit() {
        crash_at_every_step(Op::FirstCommit);
    }

    #[test]
    fn crash_at_every_step_of_rollback() {
        crash_at_every_step(Op::Rollback);
    }

    #[test]
    fn crash_at_every_step_of_revert() {
        crash_at_every_step(Op::Revert);
    }

    /// A step added to `Step` but never reached by an operation would be a crash point nobody
    /// tests; this fails until some operation goes through it.
    #[test]
    fn every_step_is_reached_by_some_operation() {
        let mut reached = BTreeSet::new();
        for op in [
            Op::Stage,
            Op::Commit,
            Op::FirstCommit,
            Op::Rollback,
            Op::Revert,
        ] {
            reached.extend(trace_of(op).into_iter().map(|s| format!("{s:?}")));
        }
        let all: BTreeSet<String> = Step::ALL.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(reached, all);
    }

    #[test]
    fn open_removes_debris_and_nothing_else() {
        let (_tmp, store) = new_store();
        store.stage(&x509("a")).unwrap();
        store.commit().unwrap();
        let dir = store.dir().to_path_buf();
        drop(store);
        // What a crash mid-write leaves: half a generation, a stray complete one, a half state.
        fs::create_dir(dir.join("gen-00112233445566aa.tmp")).unwrap();
        fs::write(
            dir.join("gen-00112233445566aa.tmp/key.pem"),
            "-----BEGIN PRI",
        )
        .unwrap();
        fs::create_dir(dir.join("gen-00112233445566bb")).unwrap();
        fs::write(dir.join(STATE_TMP), "version=1\nactive=gen-").unwrap();
        // Not ours: left alone.
        fs::write(dir.join("notes.tmp"), "mine").unwrap();
        fs::create_dir(dir.join("gen-backup")).unwrap();

        let store = CredentialStore::open(&dir).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let active = store.read_state().unwrap().active.unwrap();
        let mut expected = vec![
            active,
            "gen-backup".into(),
            "lock".into(),
            "notes.tmp".into(),
        ];
        expected.push(STATE.into());
        expected.sort();
        assert_eq!(names, expected);
        store.load().unwrap();
    }

    // ---- bad input changes nothing -----------------------------------------------------------

    #[test]
    fn corrupt_state_is_a_typed_error_and_nothing_is_touched() {
        let (_tmp, store) = new_store();
        store.stage(&x509("a")).unwrap();
        store.commit().unwrap();
        let active = store.read_state().unwrap().active.unwrap();
        let dir = store.dir().to_path_buf();
        drop(store);
        for corrupt in [
            format!("version=1\nactive={active}\ncurrent={active}\n"), // unknown slot
            format!("version=1\nactive={active}\ngarbage\n"),          // unknown line
            format!("version=1\nactive={active}\nactive={active}\n"),  // twice
            format!("version=1\nactive={active}\nprevious={active}\n"), // shared generation
            "version=1\nactive=../../etc\n".to_string(),               // not a generation
            format!("active={active}\n"),                              // no version
        ]
        .map(String::into_bytes)
        .into_iter()
        .chain([vec![0xff, 0xfe, 0x00]])
        {
            fs::write(dir.join(STATE), &corrupt).unwrap();
            let corrupt = String::from_utf8_lossy(&corrupt);
            // Debris that a successful open would delete: it must survive a failed one.
            fs::create_dir(dir.join("gen-0000000000000000")).unwrap();
            let before = snapshot(&dir);
            match CredentialStore::open(&dir) {
                Err(Error::InvalidInput { field, .. }) => {
                    assert_eq!(field, STATE_FIELD, "{corrupt:?}")
                }
                other => panic!("{corrupt:?}: {other:?}"),
            }
            assert_eq!(snapshot(&dir), before, "{corrupt:?}");
            fs::remove_dir(dir.join("gen-0000000000000000")).unwrap();
        }
        fs::write(dir.join(STATE), format!("version=2\nactive={active}\n")).unwrap();
        assert!(matches!(
            CredentialStore::open(&dir),
            Err(Error::NotSupported(_))
        ));
    }

    #[test]
    fn damaged_active_generation_is_a_typed_error_naming_the_slot() {
        let (_tmp, store) = new_store();
        store.stage(&x509("old")).unwrap();
        store.commit().unwrap();
        store.stage(&x509("new")).unwrap();
        store.commit().unwrap();
        let state = store.read_state().unwrap();
        let active = store.dir.join(state.active.unwrap());
        let previous = store.dir.join(state.previous.unwrap());
        let good_key = fs::read(active.join(KEY)).unwrap();
        let good_chain = fs::read(active.join(CHAIN)).unwrap();

        let assert_damaged = |what: &str| match store.load() {
            Err(Error::InvalidInput { field, reason }) => {
                assert_eq!(field, "active credential", "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        };

        fs::write(active.join(KEY), &good_key[..good_key.len() / 2]).unwrap();
        assert_damaged("truncated key");
        fs::write(active.join(KEY), b"garbage").unwrap();
        assert_damaged("garbage key");
        fs::write(active.join(KEY), [0xff, 0xfe, 0x00]).unwrap();
        assert_damaged("binary key");
        // The previous generation's key with the active certificate: a mix must not load.
        fs::copy(previous.join(KEY), active.join(KEY)).unwrap();
        assert_damaged("key of another credential");
        fs::write(active.join(KEY), &good_key).unwrap();
        fs::write(active.join(CHAIN), &good_chain[..good_chain.len() / 2]).unwrap();
        assert_damaged("truncated chain");
        fs::remove_file(active.join(CHAIN)).unwrap();
        assert_damaged("missing chain");
        fs::write(active.join(CHAIN), &good_chain).unwrap();
        fs::write(active.join(KIND), "floppy\n").unwrap();
        assert_damaged("unknown kind");
        fs::write(active.join(KIND), "x509\n").unwrap();
        store.load().unwrap();

        // The other slots still load, and the error message names the slot in its field.
        fs::write(previous.join(KEY), b"garbage").unwrap();
        match store.load_slot(Slot::Previous) {
            Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "previous credential"),
            other => panic!("{other:?}"),
        }
        store.load().unwrap();
    }

    #[test]
    fn nothing_to_act_on_is_a_precondition_and_changes_nothing() {
        let (_tmp, store) = new_store();
        let check = |store: &CredentialStore| {
            let before = snapshot(store.dir());
            for (name, result) in [
                ("commit", store.commit()),
                ("rollback", store.rollback()),
                ("revert", store.revert()),
            ] {
                assert!(
                    matches!(result, Err(Error::Precondition(_))),
                    "{name}: {result:?}"
                );
            }
            assert_eq!(snapshot(store.dir()), before);
        };
        check(&store); // empty store
        store.stage(&x509("a")).unwrap();
        store.commit().unwrap();
        check(&store); // active only
    }

    /// A key that signs but will not leave its (pretend) hardware.
    #[derive(Debug)]
    struct HardwareKey(SoftwareKey);

    impl Signer for HardwareKey {
        fn algorithm(&self) -> KeyAlgorithm {
            self.0.algorithm()
        }
        fn public_key_spki(&self) -> &[u8] {
            self.0.public_key_spki()
        }
        fn schemes(&self) -> &[SignatureScheme] {
            self.0.schemes()
        }
        fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
            self.0.sign(scheme, message)
        }
        // export_pkcs8_der: the default, NotSupported.
    }

    #[test]
    fn non_exportable_signer_cannot_be_staged_and_nothing_is_written() {
        let (_tmp, store) = new_store();
        store.stage(&x509("a")).unwrap();
        store.commit().unwrap();
        let before = snapshot(store.dir());

        let hardware = Arc::new(HardwareKey(SoftwareKey::generate_p256().unwrap()));
        let cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&RcgenKey::new(hardware.clone()).unwrap())
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        for credentials in [
            Credentials::X509(X509Credential::new(chain, hardware.clone()).unwrap()),
            Credentials::JwtKey(hardware),
        ] {
            let result = store.stage(&credentials);
            assert!(matches!(result, Err(Error::NotSupported(_))), "{result:?}");
            assert_eq!(snapshot(store.dir()), before);
        }
    }

    #[test]
    fn debug_shows_only_the_directory() {
        let (_tmp, store) = new_store();
        let debug = format!("{store:?}");
        assert!(debug.starts_with("CredentialStore { dir: "), "{debug}");
        assert!(debug.contains(&*store.dir().to_string_lossy()), "{debug}");
    }

    /// Writers in several threads (each with its own handle, as separate processes would have)
    /// interleave whole operations only: the store always reopens clean and loads.
    #[test]
    fn concurrent_writers_never_corrupt_the_store() {
        let (_tmp, store) = new_store();
        store.stage(&symmetric()).unwrap();
        store.commit().unwrap();
        let dir = store.dir().to_path_buf();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let mine = CredentialStore::open(&dir).unwrap();
                    for _ in 0..5 {
                        mine.stage(&jwt_key()).unwrap();
                        // Another thread may have committed or replaced our pending credential.
                        match mine.commit() {
                            Ok(()) | Err(Error::Precondition(_)) => {}
                            Err(e) => panic!("{e}"),
                        }
                        mine.load().unwrap();
                    }
                });
            }
        });
        let store = CredentialStore::open(&dir).unwrap();
        store.load().unwrap();
        assert_no_leftovers(&store);
    }
}
