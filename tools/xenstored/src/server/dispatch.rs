//! Request processing: decode, check, run, reply — as the C daemon's
//! `process_message()` and `do_*()` handlers.

use std::sync::Arc;

use tracing::{info, trace};

use super::Shared;
use super::domain;
use super::state::{State, Watch, send_event};
use crate::path::canonicalize;
use crate::perms::{Caller, Perm};
use crate::store::{Change, GlobalView, View, ops};
use crate::wire::{Errno, Message, MsgType, PAYLOAD_MAX, atoi, join_nul, nul_strings, one_arg};

/// What a handler produced.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Changes whose watches fire before the reply is queued.
    pub changes: Vec<Change>,
    /// Special events (`@introduceDomain`, `@releaseDomain`) to fire.
    pub specials: Vec<&'static str>,
    /// The initial event of a new watch, queued after the reply.
    pub initial: Option<(String, Vec<u8>)>,
}

pub(super) type Reply = Result<Vec<u8>, Errno>;

const OK: &[u8] = b"OK\0";

/// Processes one request of connection `id`. Returns `false` if the
/// connection no longer exists afterwards.
pub(super) fn dispatch(shared: &Arc<Shared>, st: &mut State, id: u64, msg: &Message) -> bool {
    let mut out = Outcome::default();
    let reply = handle(shared, st, id, msg, &mut out);
    st.fire(&out.changes);
    for name in &out.specials {
        st.fire_special(name);
    }
    let Some(conn) = st.conns.get(&id) else {
        return false;
    };
    let (ty, payload) = match reply {
        Ok(p) if p.len() <= PAYLOAD_MAX => (msg.msg_type, p),
        Ok(_) => error_reply(Errno::E2big),
        Err(e) => error_reply(e),
    };
    trace!(conn = id, ty, req = msg.req_id, "reply");
    let reply = Message {
        msg_type: ty,
        req_id: msg.req_id,
        tx_id: msg.tx_id,
        payload,
    };
    if let Ok(bytes) = reply.to_bytes() {
        conn.outbox.push_reply(bytes);
    }
    if let Some((path, token)) = out.initial {
        send_event(conn, &path, &token, false);
    }
    true
}

fn error_reply(e: Errno) -> (u32, Vec<u8>) {
    (MsgType::Error.to_u32(), join_nul(&[e.name()]))
}

fn is_privileged_only(ty: MsgType) -> bool {
    matches!(
        ty,
        MsgType::Control
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::IsDomainIntroduced
            | MsgType::Resume
            | MsgType::SetTarget
    )
}

fn handle(
    shared: &Arc<Shared>,
    st: &mut State,
    id: u64,
    msg: &Message,
    out: &mut Outcome,
) -> Reply {
    let caller = st.caller(id).ok_or(Errno::Einval)?;
    let ty = match msg.kind() {
        Some(MsgType::WatchEvent | MsgType::Error) | None => return Err(Errno::Enosys),
        Some(ty) => ty,
    };
    if is_privileged_only(ty) && !caller.privileged {
        return Err(Errno::Eacces);
    }
    let uses_tx = !matches!(ty, MsgType::Watch | MsgType::Unwatch);
    let tx = if uses_tx { msg.tx_id } else { 0 };
    if tx != 0 && !st.conns.get(&id).is_some_and(|c| c.txns.contains_key(&tx)) {
        return Err(Errno::Enoent);
    }
    let p = msg.payload.as_slice();
    match ty {
        MsgType::Read => node_op(st, id, tx, out, p, false, |v, c, path| {
            ops::read(v, c, path)
        }),
        MsgType::Directory => node_op(st, id, tx, out, p, false, |v, c, path| {
            ops::directory(v, c, path)
        }),
        MsgType::Mkdir => node_op(st, id, tx, out, p, false, |v, c, path| {
            ops::mkdir(v, c, path).map(|()| OK.to_vec())
        }),
        MsgType::Rm => node_op(st, id, tx, out, p, false, |v, c, path| {
            ops::rm(v, c, path).map(|()| OK.to_vec())
        }),
        MsgType::GetPerms => node_op(st, id, tx, out, p, true, |v, c, path| {
            let perms = ops::get_perms(v, c, path)?;
            Ok(join_nul(
                &perms.iter().map(Perm::to_string).collect::<Vec<_>>(),
            ))
        }),
        MsgType::Write => write(st, id, tx, out, p),
        MsgType::DirectoryPart => directory_part(st, id, tx, out, p),
        MsgType::SetPerms => set_perms(st, id, tx, out, &caller, p),
        MsgType::Watch => watch(st, id, &caller, p, out),
        MsgType::Unwatch => unwatch(st, id, &caller, p),
        MsgType::TransactionStart => transaction_start(st, id, &caller, tx),
        MsgType::TransactionEnd => transaction_end(st, id, tx, p, out),
        MsgType::ResetWatches => reset_watches(st, id),
        MsgType::Introduce => domain::introduce(shared, st, p, out),
        MsgType::Release => domain::release(st, p, out),
        MsgType::IsDomainIntroduced => domain::is_introduced(st, p),
        MsgType::GetDomainPath => domain::get_domain_path(p),
        MsgType::Resume => domain::resume(st, p),
        MsgType::SetTarget => domain::set_target(st, p),
        MsgType::Control => control(p),
        MsgType::WatchEvent | MsgType::Error => Err(Errno::Enosys),
    }
}

/// Runs `f` on the global database or inside transaction `tx`.
fn with_view<R>(
    st: &mut State,
    id: u64,
    tx: u32,
    out: &mut Outcome,
    f: impl FnOnce(&mut dyn View, &Caller) -> Result<R, Errno>,
) -> Result<R, Errno> {
    let caller = st.caller(id).ok_or(Errno::Einval)?;
    let State { store, conns, .. } = st;
    if tx == 0 {
        let mut view: GlobalView<'_> = store.global();
        let result = f(&mut view, &caller);
        out.changes.extend(view.take_changes());
        return result;
    }
    let txn = conns
        .get_mut(&id)
        .and_then(|c| c.txns.get_mut(&tx))
        .ok_or(Errno::Enoent)?;
    f(&mut store.txn_view(txn), &caller)
}

/// A request whose payload is a single path.
fn node_op(
    st: &mut State,
    id: u64,
    tx: u32,
    out: &mut Outcome,
    payload: &[u8],
    allow_special: bool,
    f: impl FnOnce(&mut dyn View, &Caller, &str) -> Reply,
) -> Reply {
    let raw = one_arg(payload).ok_or(Errno::Einval)?;
    with_view(st, id, tx, out, |v, caller| {
        let path = canonicalize(caller, raw, allow_special)?;
        f(v, caller, &path.path)
    })
}

fn write(st: &mut State, id: u64, tx: u32, out: &mut Outcome, payload: &[u8]) -> Reply {
    let raw = *nul_strings(payload).first().ok_or(Errno::Einval)?;
    let value = &payload[raw.len() + 1..];
    with_view(st, id, tx, out, |v, caller| {
        let path = canonicalize(caller, raw, false)?;
        ops::write(v, caller, &path.path, value).map(|()| OK.to_vec())
    })
}

fn directory_part(st: &mut State, id: u64, tx: u32, out: &mut Outcome, payload: &[u8]) -> Reply {
    let strings = nul_strings(payload);
    let [raw, offset] = strings.as_slice() else {
        return Err(Errno::Einval);
    };
    // C assigns atoi() to an unsigned offset: negative values are huge.
    let offset = usize::try_from(atoi(offset)).unwrap_or(usize::MAX);
    with_view(st, id, tx, out, |v, caller| {
        let path = canonicalize(caller, raw, false)?;
        ops::directory_part(v, caller, &path.path, offset)
    })
}

fn set_perms(
    st: &mut State,
    id: u64,
    tx: u32,
    out: &mut Outcome,
    caller: &Caller,
    payload: &[u8],
) -> Reply {
    let strings = nul_strings(payload);
    let Some((raw, perm_strings)) = strings.split_first().filter(|(_, p)| !p.is_empty()) else {
        return Err(Errno::Einval);
    };
    if !caller.privileged && perm_strings.len() > st.store.limits().guest_perms {
        return Err(Errno::Enospc);
    }
    let perms: Vec<Perm> = perm_strings
        .iter()
        .map(|s| Perm::parse(s).ok_or(Errno::Einval))
        .collect::<Result<_, _>>()?;
    with_view(st, id, tx, out, |v, caller| {
        let path = canonicalize(caller, raw, true)?;
        ops::set_perms(v, caller, &path.path, &perms).map(|()| OK.to_vec())
    })
}

fn watch(st: &mut State, id: u64, caller: &Caller, payload: &[u8], out: &mut Outcome) -> Reply {
    let strings = nul_strings(payload);
    let [raw, token] = strings.as_slice() else {
        return Err(Errno::Einval);
    };
    let canon = canonicalize(caller, raw, true)?;
    let limit = if caller.privileged {
        st.store.limits().conn_watches
    } else {
        st.store.limits().guest_watches
    };
    let conn = st.conns.get_mut(&id).ok_or(Errno::Einval)?;
    if conn
        .watches
        .iter()
        .any(|w| w.path == canon.path && w.token == *token)
    {
        return Err(Errno::Eexist);
    }
    if conn.watches.len() >= limit {
        return Err(Errno::E2big);
    }
    let w = Watch {
        path: canon.path,
        token: token.to_vec(),
        prefix_len: canon.prefix_len,
    };
    out.initial = Some((w.path[w.prefix_len..].to_owned(), w.token.clone()));
    conn.watches.push(w);
    Ok(OK.to_vec())
}

fn unwatch(st: &mut State, id: u64, caller: &Caller, payload: &[u8]) -> Reply {
    let strings = nul_strings(payload);
    let [raw, token] = strings.as_slice() else {
        return Err(Errno::Einval);
    };
    let canon = canonicalize(caller, raw, true)?;
    let conn = st.conns.get_mut(&id).ok_or(Errno::Einval)?;
    let pos = conn
        .watches
        .iter()
        .position(|w| w.path == canon.path && w.token == *token)
        .ok_or(Errno::Enoent)?;
    conn.watches.remove(pos);
    Ok(OK.to_vec())
}

fn transaction_start(st: &mut State, id: u64, caller: &Caller, tx: u32) -> Reply {
    if tx != 0 {
        return Err(Errno::Ebusy);
    }
    let limits = st.store.limits();
    let (max_txns, max_nodes) = if caller.privileged {
        (limits.conn_transactions, limits.txn_nodes)
    } else {
        (limits.guest_transactions, limits.guest_txn_nodes)
    };
    let conn = st.conns.get_mut(&id).ok_or(Errno::Einval)?;
    if conn.txns.len() >= max_txns {
        return Err(Errno::Enospc);
    }
    let mut txid = conn.next_txn;
    while txid == 0 || conn.txns.contains_key(&txid) {
        txid = txid.wrapping_add(1);
    }
    conn.next_txn = txid.wrapping_add(1);
    conn.txns.insert(txid, crate::store::Txn::new(max_nodes));
    Ok(join_nul(&[txid.to_string()]))
}

fn transaction_end(st: &mut State, id: u64, tx: u32, payload: &[u8], out: &mut Outcome) -> Reply {
    let commit = match one_arg(payload) {
        Some(b"T") => true,
        Some(b"F") => false,
        _ => return Err(Errno::Einval),
    };
    if tx == 0 {
        return Err(Errno::Enoent);
    }
    let conn = st.conns.get_mut(&id).ok_or(Errno::Einval)?;
    let txn = conn.txns.remove(&tx).ok_or(Errno::Enoent)?;
    if commit {
        out.changes.extend(st.store.commit(txn)?);
    }
    Ok(OK.to_vec())
}

fn reset_watches(st: &mut State, id: u64) -> Reply {
    let conn = st.conns.get_mut(&id).ok_or(Errno::Einval)?;
    conn.watches.clear();
    conn.txns.clear();
    Ok(OK.to_vec())
}

/// `CONTROL`: a small subset of the C daemon's commands.
fn control(payload: &[u8]) -> Reply {
    let strings = nul_strings(payload);
    match strings.as_slice() {
        [b"help", ..] => Ok(join_nul(&["check\nprint\nhelp\n"])),
        [b"check", ..] => Ok(OK.to_vec()),
        [b"print", text, ..] => {
            info!("control print: {}", String::from_utf8_lossy(text));
            Ok(OK.to_vec())
        }
        _ => Err(Errno::Einval),
    }
}
