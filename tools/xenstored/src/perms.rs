//! Node permissions: `n<domid>`, `r<domid>`, `w<domid>`, `b<domid>`.
//!
//! The first entry of a permission list names the owner (who always has full
//! access) and the default access for every domain not listed later.

use std::fmt;

/// The access a permission entry grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    fn from_letter(c: u8) -> Option<Access> {
        match c {
            b'n' => Some(Access::None),
            b'r' => Some(Access::Read),
            b'w' => Some(Access::Write),
            b'b' => Some(Access::Both),
            _ => None,
        }
    }

    /// Whether this access allows reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this access allows writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// What is granted.
    pub access: Access,
    /// To which domain.
    pub domid: u16,
}

impl Perm {
    /// Builds an entry.
    pub const fn new(access: Access, domid: u16) -> Perm {
        Perm { access, domid }
    }

    /// Parses `r5`-style text (decimal domid); `None` if malformed.
    pub fn parse(text: &[u8]) -> Option<Perm> {
        let (&letter, digits) = text.split_first()?;
        let access = Access::from_letter(letter)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let domid = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some(Perm { access, domid })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

impl std::str::FromStr for Perm {
    type Err = String;

    fn from_str(s: &str) -> Result<Perm, String> {
        Perm::parse(s.as_bytes()).ok_or_else(|| format!("Invalid permission '{s}'"))
    }
}

/// Who is asking: the identity a connection acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection's domain id (0 for dom0 sockets).
    pub domid: u16,
    /// Dom0 and tool sockets bypass permission checks and quotas.
    pub privileged: bool,
    /// `SET_TARGET`: this domain also acts with the target's rights.
    pub target: Option<u16>,
}

impl Caller {
    /// A privileged dom0 caller.
    pub const DOM0: Caller = Caller {
        domid: 0,
        privileged: true,
        target: None,
    };

    /// An unprivileged guest domain.
    pub const fn guest(domid: u16) -> Caller {
        Caller {
            domid,
            privileged: false,
            target: None,
        }
    }

    fn is(&self, domid: u16) -> bool {
        self.domid == domid || self.target == Some(domid)
    }
}

/// Effective rights of a caller on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rights {
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
    /// Owns the node (may change its permissions).
    pub owner: bool,
}

/// The C daemon's `perm_for_conn()`: owner and privileged callers get
/// everything, then the first matching later entry, then the default.
pub fn rights(caller: &Caller, perms: &[Perm]) -> Rights {
    let Some(first) = perms.first() else {
        return Rights::default();
    };
    if caller.privileged || caller.is(first.domid) {
        return Rights {
            read: true,
            write: true,
            owner: true,
        };
    }
    let entry = perms[1..]
        .iter()
        .find(|p| caller.is(p.domid))
        .unwrap_or(first);
    Rights {
        read: entry.access.can_read(),
        write: entry.access.can_write(),
        owner: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["n0", "r5", "w2", "b3", "r65535"] {
            assert_eq!(s.parse::<Perm>().unwrap().to_string(), s);
        }
        for bad in ["", "x1", "r", "r-1", "r65536", "r1x"] {
            assert!(bad.parse::<Perm>().is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_gets_everything_others_follow_acl_then_default() {
        let perms = ["n1", "r5", "w6"].map(|s| s.parse().unwrap());
        let owner = rights(&Caller::guest(1), &perms);
        assert!(owner.read && owner.write && owner.owner);
        let r5 = rights(&Caller::guest(5), &perms);
        assert!(r5.read && !r5.write && !r5.owner);
        let w6 = rights(&Caller::guest(6), &perms);
        assert!(!w6.read && w6.write);
        let other = rights(&Caller::guest(9), &perms);
        assert_eq!(other, Rights::default());
        assert!(rights(&Caller::DOM0, &perms).owner);
    }

    #[test]
    fn target_acts_with_targets_rights() {
        let perms = ["n7".parse().unwrap()];
        let caller = Caller {
            domid: 3,
            privileged: false,
            target: Some(7),
        };
        assert!(rights(&caller, &perms).owner);
    }
}
