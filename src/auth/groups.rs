//! The `groups` claim: which groups a token's holder may use.
//!
//! Each entry is an exact group name (`room1`) or a prefix ending in `*` (`team.*`; a lone `*`
//! allows every group). Checked on `join` and on a `group` message to a group the connection
//! has not joined (a joined group was checked when it was joined; a refresh that revokes it
//! also leaves it), and meant for `history` when that exists.

use crate::protocol::{MAX_NAME_LEN, is_valid_name};

/// The groups a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// Sorted, for a binary search.
    exact: Box<[Box<str>]>,
    prefixes: Box<[Box<str>]>,
}

impl Groups {
    /// Parses the claim's entries. An entry that is neither a valid group name nor a valid
    /// name prefix followed by one `*` makes the whole token invalid: a typo must not
    /// silently widen or narrow what the issuer meant.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Groups, String> {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for entry in entries {
            let e = entry.as_ref();
            match e.strip_suffix('*') {
                Some(prefix) if prefix.is_empty() || (prefix.len() < MAX_NAME_LEN && is_valid_name(prefix)) => {
                    prefixes.push(Box::from(prefix))
                }
                None if is_valid_name(e) => exact.push(Box::from(e)),
                _ => {
                    return Err(format!(
                        "`groups` entry {e:?} is neither a group name nor a prefix ending in `*` (1-128 of A-Z a-z 0-9 _ . : @ -)"
                    ));
                }
            }
        }
        exact.sort_unstable();
        exact.dedup();
        prefixes.sort_unstable();
        prefixes.dedup();
        Ok(Groups { exact: exact.into(), prefixes: prefixes.into() })
    }

    /// Whether `group` is allowed.
    pub fn allows(&self, group: &str) -> bool {
        self.exact.binary_search_by(|e| (**e).cmp(group)).is_ok()
            || self.prefixes.iter().any(|p| group.starts_with(&**p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_prefixes() {
        let g = Groups::parse(&["room1", "team.*", "a:b@c-d_e", "room1"]).unwrap();
        for ok in ["room1", "team.", "team.x", "team.x.y", "a:b@c-d_e"] {
            assert!(g.allows(ok), "{ok}");
        }
        for no in ["room", "room10", "team", "teamx", "x.team.y", "ROOM1", ""] {
            assert!(!g.allows(no), "{no}");
        }
    }

    #[test]
    fn a_lone_star_allows_everything_and_an_empty_list_nothing() {
        assert!(Groups::parse(&["*"]).unwrap().allows("anything"));
        let none = Groups::parse::<&str>(&[]).unwrap();
        assert!(!none.allows("room1"));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["", "a b", "te*am", "**", "a*b*", "é*", &"x".repeat(129), &format!("{}*", "x".repeat(128))] {
            assert!(Groups::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert!(Groups::parse(&[format!("{}*", "x".repeat(127))]).is_ok());
    }
}
