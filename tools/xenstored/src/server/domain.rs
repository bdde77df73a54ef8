//! Domain management: `INTRODUCE`, `RELEASE` and friends.
//!
//! There is no shared ring page or event channel in the emulator: an
//! introduced domain N gets its own listening socket `<socket>.d<N>`, and
//! every connection accepted there acts as domain N (unprivileged).

use std::sync::Arc;

use tracing::{debug, warn};

use super::dispatch::{Outcome, Reply};
use super::state::State;
use super::{Listener, Shared, bind_socket};
use crate::path::domain_path;
use crate::perms::Caller;
use crate::wire::{DOMID_FIRST_RESERVED, DOMID_SELF, Errno, atoi, join_nul, nul_strings, one_arg};

const OK: &[u8] = b"OK\0";

/// A real guest domain id: not dom0, not reserved.
fn guest_domid(raw: &[u8]) -> Result<u16, Errno> {
    let id = u32::try_from(atoi(raw)).map_err(|_| Errno::Einval)?;
    if id == 0 || id >= DOMID_FIRST_RESERVED {
        return Err(Errno::Einval);
    }
    u16::try_from(id).map_err(|_| Errno::Einval)
}

/// `INTRODUCE <domid>|<mfn>|<port>|`: opens the domain's socket and fires
/// `@introduceDomain`; a repeated introduce resets the domain's watches and
/// transactions instead.
pub(super) fn introduce(
    shared: &Arc<Shared>,
    st: &mut State,
    payload: &[u8],
    out: &mut Outcome,
) -> Reply {
    let strings = nul_strings(payload);
    let [raw_domid, _mfn, raw_port, ..] = strings.as_slice() else {
        return Err(Errno::Einval);
    };
    if atoi(raw_port) <= 0 {
        return Err(Errno::Einval);
    }
    let domid = guest_domid(raw_domid)?;
    if st.domains.contains_key(&domid) {
        for conn in st.conns.values_mut() {
            if conn.caller == Caller::guest(domid) {
                conn.watches.clear();
                conn.txns.clear();
            }
        }
        return Ok(OK.to_vec());
    }
    let path = shared.domain_socket(domid);
    let listener = bind_socket(&path).map_err(|e| {
        warn!(domid, "cannot create domain socket: {e}");
        Errno::Eio
    })?;
    let listener =
        Listener::start(shared, path, listener, Caller::guest(domid)).map_err(|_| Errno::Enomem)?;
    debug!(domid, "domain introduced");
    st.domains.insert(domid, listener);
    out.specials.push("@introduceDomain");
    Ok(OK.to_vec())
}

/// `RELEASE <domid>|`: removes the socket, closes the domain's connections
/// (dropping their watches and transactions) and fires `@releaseDomain`.
pub(super) fn release(st: &mut State, payload: &[u8], out: &mut Outcome) -> Reply {
    let domid = introduced_arg(st, payload)?;
    if let Some(listener) = st.domains.remove(&domid) {
        listener.stop();
    }
    let ids: Vec<u64> = st
        .conns
        .iter()
        .filter(|(_, c)| c.caller == Caller::guest(domid))
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(conn) = st.remove_conn(id) {
            conn.kill();
        }
    }
    st.targets.remove(&domid);
    debug!(domid, "domain released");
    out.specials.push("@releaseDomain");
    Ok(OK.to_vec())
}

/// The domid argument of `RELEASE`/`RESUME`: `EINVAL` for dom0 or garbage,
/// `ENOENT` if not introduced.
fn introduced_arg(st: &State, payload: &[u8]) -> Result<u16, Errno> {
    let raw = one_arg(payload).ok_or(Errno::Einval)?;
    let id = u32::try_from(atoi(raw)).map_err(|_| Errno::Enoent)?;
    if id == 0 {
        return Err(Errno::Einval);
    }
    let domid = u16::try_from(id).map_err(|_| Errno::Enoent)?;
    if st.domains.contains_key(&domid) {
        Ok(domid)
    } else {
        Err(Errno::Enoent)
    }
}

/// `IS_DOMAIN_INTRODUCED <domid>|` -> `T` or `F` (dom0 and `DOMID_SELF`: `T`).
pub(super) fn is_introduced(st: &State, payload: &[u8]) -> Reply {
    let raw = one_arg(payload).ok_or(Errno::Einval)?;
    let id = atoi(raw);
    let known = u32::try_from(id).is_ok_and(|id| {
        id == 0 || id == DOMID_SELF || u16::try_from(id).is_ok_and(|d| st.domains.contains_key(&d))
    });
    Ok(if known {
        b"T\0".to_vec()
    } else {
        b"F\0".to_vec()
    })
}

/// `GET_DOMAIN_PATH <domid>|` -> `/local/domain/<domid>`.
pub(super) fn get_domain_path(payload: &[u8]) -> Reply {
    let raw = one_arg(payload).ok_or(Errno::Einval)?;
    // C formats atoi()'s result as unsigned.
    let id = u32::from_ne_bytes(atoi(raw).to_ne_bytes());
    Ok(join_nul(&[domain_path(id)]))
}

/// `RESUME <domid>|`: nothing to resume in the emulator.
pub(super) fn resume(st: &State, payload: &[u8]) -> Reply {
    introduced_arg(st, payload).map(|_| OK.to_vec())
}

/// `SET_TARGET <domid>|<target>|`: domid acts with the target's rights.
pub(super) fn set_target(st: &mut State, payload: &[u8]) -> Reply {
    let strings = nul_strings(payload);
    let [raw_dom, raw_target, ..] = strings.as_slice() else {
        return Err(Errno::Einval);
    };
    let lookup = |raw: &[u8]| {
        u16::try_from(atoi(raw))
            .ok()
            .filter(|d| st.domains.contains_key(d))
            .ok_or(Errno::Enoent)
    };
    let domid = lookup(raw_dom)?;
    let target = lookup(raw_target)?;
    st.targets.insert(domid, target);
    Ok(OK.to_vec())
}
