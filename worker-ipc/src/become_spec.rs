//! [`BecomeSpec`]: the account a call runs as on its target, [`BecomeKey`]: when two calls
//! share a become interpreter, and [`Secret`]: a password that never reaches a log.

use std::{
    fmt,
    fs::File,
    io::Read,
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

/// What [`Secret`] shows in `Debug` output and serializes to: the password itself only
/// ever leaves through [`Secret::expose`].
pub const REDACTED: &str = "<redacted>";

/// A become password.
///
/// Opaque on purpose: `Debug` and `Serialize` print [`REDACTED`], there is no `Display`,
/// and a malformed value is rejected without quoting it, so no log line, status table or
/// error message can carry it. The one way out is [`Secret::expose`], used when the mux
/// builds the agent's `spawn` frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Secret {
        Secret(password.into())
    }

    /// The password, for the one place that must send it (the agent's `spawn` frame).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How many bytes of random key [`Secret::keyed_digest`] uses: SHA-1's block size.
const DIGEST_KEY_LEN: usize = 64;

/// This process's random key for [`Secret::keyed_digest`]: a digest from one run says nothing
/// in another, and no table of common passwords' digests can be made ahead.
fn digest_key() -> &'static [u8; DIGEST_KEY_LEN] {
    static KEY: OnceLock<[u8; DIGEST_KEY_LEN]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; DIGEST_KEY_LEN];
        if File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut key))
            .is_err()
        {
            // No /dev/urandom: still unique to this process, if guessable.
            let seed = format!(
                "{}:{:?}:{:p}",
                std::process::id(),
                SystemTime::now().duration_since(UNIX_EPOCH),
                &key
            );
            let first = sha1_smol::Sha1::from(seed.as_bytes()).digest().bytes();
            key[..first.len()].copy_from_slice(&first);
        }
        key
    })
}

impl Secret {
    /// HMAC-SHA1 of the password under this process's random key, in hex: equal for equal
    /// passwords within one mux, and no way back to the password.
    pub fn keyed_digest(&self) -> String {
        let key = digest_key();
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let mut inner = sha1_smol::Sha1::from(pad(0x36));
        inner.update(self.0.as_bytes());
        let mut outer = sha1_smol::Sha1::from(pad(0x5c));
        outer.update(&inner.digest().bytes());
        outer.digest().to_string()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

/// Serializes as [`REDACTED`]: a `BecomeSpec` written back out by Rust code (logs, status,
/// tests) never carries the password.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Accepts a JSON string only. The error for anything else names the field, not the value
/// (serde's default message would quote it).
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        match Value::deserialize(deserializer) {
            Ok(Value::String(s)) => Ok(Secret(s)),
            _ => Err(de::Error::custom(
                "become password must be a string or null",
            )),
        }
    }
}

/// `"become": {"method": "sudo", "user": "postgres", "exe": "sudo", "flags": "-H -S -n",
/// "password": "..." | null, "python": null}` in a worker's call (see `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BecomeSpec {
    /// `sudo`, `su` or `doas`; checked by the agent, which knows how to drive each.
    pub method: String,
    /// The account to become.
    #[serde(default = "default_user")]
    pub user: String,
    /// The program to run instead of `method` (`ansible_become_exe`); `None` = `method`.
    #[serde(default)]
    pub exe: Option<String>,
    /// Extra flags for the program, as one string the agent parses as the tool would.
    #[serde(default)]
    pub flags: Option<String>,
    /// The password to answer prompts with; in the key only as a keyed digest, never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Python interpreter for the become interpreter; `None` = the login one's.
    #[serde(default)]
    pub python: Option<String>,
}

fn default_user() -> String {
    "root".to_owned()
}

impl BecomeSpec {
    /// The sharing key: every field, the password as its keyed digest. An interpreter that
    /// one password opened never serves a call with another: that call's password is put
    /// to the become tool, which refuses a wrong one as it would for vanilla Ansible.
    pub fn key(&self) -> BecomeKey {
        BecomeKey {
            method: self.method.clone(),
            user: self.user.clone(),
            exe: self.exe.clone(),
            flags: self.flags.clone(),
            python: self.python.clone(),
            password_digest: self.password.as_ref().map(Secret::keyed_digest),
        }
    }

    /// The JSON the agent's `spawn` frame carries, password included: the single place a
    /// password is written out. Never log the result.
    pub fn to_agent_json(&self) -> Value {
        json!({
            "method": self.method,
            "user": self.user,
            "exe": self.exe,
            "flags": self.flags,
            "password": self.password.as_ref().map(Secret::expose),
            "python": self.python,
        })
    }
}

/// A [`BecomeSpec`] with its password as a keyed digest: one become interpreter per Target
/// and key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BecomeKey {
    /// See [`BecomeSpec::method`].
    pub method: String,
    /// See [`BecomeSpec::user`].
    pub user: String,
    /// See [`BecomeSpec::exe`].
    pub exe: Option<String>,
    /// See [`BecomeSpec::flags`].
    pub flags: Option<String>,
    /// See [`BecomeSpec::python`].
    pub python: Option<String>,
    /// [`Secret::keyed_digest`] of the password; not written out (status, logs).
    #[serde(skip)]
    pub password_digest: Option<String>,
}

/// The account as people say it: `sudo:postgres`.
impl fmt::Display for BecomeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.method, self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: Value) -> Result<BecomeSpec, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn password_is_not_in_key_debug_or_serialization() {
        let a = spec(json!({"method": "sudo", "user": "pg", "password": "hunter2"})).unwrap();
        let b = spec(json!({"method": "sudo", "user": "pg", "password": null})).unwrap();
        assert_eq!(a.key().to_string(), "sudo:pg");
        assert!(!serde_json::to_string(&a.key()).unwrap().contains("hunter2"));
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!format!("{:#?}", a.key()).contains("hunter2"));
        assert!(!serde_json::to_string(&a).unwrap().contains("hunter2"));
        assert_eq!(a.to_agent_json()["password"], "hunter2");
        assert_eq!(b.to_agent_json()["password"], Value::Null);
    }

    #[test]
    fn the_password_is_in_the_key_as_a_keyed_digest() {
        let right = spec(json!({"method": "sudo", "user": "pg", "password": "hunter2"})).unwrap();
        let again = spec(json!({"method": "sudo", "user": "pg", "password": "hunter2"})).unwrap();
        let wrong = spec(json!({"method": "sudo", "user": "pg", "password": "hunter3"})).unwrap();
        let none = spec(json!({"method": "sudo", "user": "pg", "password": null})).unwrap();
        assert_eq!(right.key(), again.key());
        assert_ne!(right.key(), wrong.key());
        assert_ne!(right.key(), none.key());
        let digest = right.key().password_digest.unwrap();
        assert_eq!(digest.len(), 40);
        // Keyed: not the plain SHA-1 of the password.
        assert_ne!(
            digest,
            sha1_smol::Sha1::from("hunter2").digest().to_string()
        );
    }

    #[test]
    fn defaults_and_key_fields() {
        let s = spec(json!({"method": "su"})).unwrap();
        assert_eq!(s.user, "root");
        assert_eq!(s.exe, None);
        let other = spec(json!({"method": "su", "flags": "-l"})).unwrap();
        assert_ne!(s.key(), other.key());
    }

    #[test]
    fn bad_password_type_is_rejected_without_quoting_it() {
        let err = spec(json!({"method": "sudo", "password": 987654321})).unwrap_err();
        assert!(!err.to_string().contains("987654321"), "{err}");
        assert!(err.to_string().contains("password"), "{err}");
    }
}
