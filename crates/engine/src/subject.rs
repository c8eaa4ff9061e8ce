//! What a lease, a backoff or a doomed instance is about: a box, a pool, or
//! the owner-wide chores (the fleet). Stored and shown as `box:NAME`,
//! `pool:NAME` and `fleet`; everywhere else it is this type, not a string
//! put together by hand.

use std::fmt;
use std::str::FromStr;

/// The name of the owner-wide subject (orphans, pruning, stop jobs,
/// notification delivery).
pub const FLEET: &str = "fleet";

/// A subject of the daemons' work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A managed box, by name.
    Box(String),
    /// A worker pool, by name.
    Pool(String),
    /// The owner-wide chores.
    Fleet,
}

impl Subject {
    /// The box's name, when it is a box.
    pub fn box_name(&self) -> Option<&str> {
        match self {
            Self::Box(name) => Some(name),
            _ => None,
        }
    }

    /// The pool's name, when it is a pool.
    pub fn pool_name(&self) -> Option<&str> {
        match self {
            Self::Pool(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Box(name) => write!(f, "box:{name}"),
            Self::Pool(name) => write!(f, "pool:{name}"),
            Self::Fleet => f.write_str(FLEET),
        }
    }
}

/// A stored subject that is none of `box:NAME`, `pool:NAME` and `fleet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a subject (box:NAME, pool:NAME or fleet)")]
pub struct NotASubject(pub String);

impl FromStr for Subject {
    type Err = NotASubject;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let named = |name: &str| (!name.is_empty()).then(|| name.to_owned());
        if s == FLEET {
            return Ok(Self::Fleet);
        }
        s.strip_prefix("box:")
            .and_then(named)
            .map(Self::Box)
            .or_else(|| s.strip_prefix("pool:").and_then(named).map(Self::Pool))
            .ok_or_else(|| NotASubject(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_print_as_stored_and_read_back() {
        for (subject, text) in [
            (Subject::Box("dev".into()), "box:dev"),
            (Subject::Pool("workers".into()), "pool:workers"),
            (Subject::Fleet, "fleet"),
        ] {
            assert_eq!(subject.to_string(), text);
            assert_eq!(text.parse::<Subject>().as_ref(), Ok(&subject));
        }
        assert_eq!(
            "box:dev"
                .parse::<Subject>()
                .ok()
                .as_ref()
                .and_then(Subject::box_name),
            Some("dev")
        );
        for bad in ["dev", "box:", "pool:", "fleet:x", "Box:dev", ""] {
            let e = bad.parse::<Subject>().expect_err(bad);
            assert!(e.to_string().contains("box:NAME"), "{e}");
        }
    }
}
