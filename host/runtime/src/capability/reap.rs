//! No process a step started outlives it.
//!
//! Every child runs in its own process group, and the `hoist` program is the *child
//! subreaper* of its descendants (`PR_SET_CHILD_SUBREAPER`, set by [`become_subreaper`]
//! when it starts; a process-wide attribute, so the program sets it, not the library):
//! a grandchild whose parent exited — a `cmd &` left behind, a `setsid` daemon that
//! left its group — is re-parented to Hoist instead of to init, where it can be found.
//! After each child exits, [`sweep`] kills its process group and every process that was
//! re-parented to Hoist from a group Hoist made or from another session, with their
//! descendants, and reaps them. When a step is cancelled (timeout), the child's whole
//! tree is killed while it is still a tree, then swept the same way.
//!
//! Hoist's own children that no step started (a test's servers, a worker's flows) keep
//! Hoist's group and session and are never touched. An embedder that is not a subreaper
//! still gets the group kill and, on cancellation, the tree kill.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use rustix::process::{Pid, Signal, WaitOptions};

/// Process groups made for steps' children, and the children still being waited for.
static GROUPS: Mutex<Groups> = Mutex::new(Groups {
    made: Vec::new(),
    live: Vec::new(),
});

struct Groups {
    /// Group ids of every child spawned for a step (they equal the child's pid).
    made: Vec<i32>,
    /// Children whose `wait` is pending: never swept (another step owns them).
    live: Vec<i32>,
}

/// Whether this process is the subreaper of its descendants: only then can a step's
/// orphans become its children, and only then is there anything to sweep.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// Make this process the subreaper of its descendants. Idempotent.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustix::process::set_child_subreaper(Some(rustix::process::getpid())).is_ok() {
            SUBREAPER.store(true, Ordering::SeqCst);
        }
    });
}

/// Remember a step's child (and its group) until [`done`].
pub fn started(pid: i32) {
    let mut g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    g.made.push(pid);
    // Bounded: old group ids are only needed while their members may live.
    if g.made.len() > 4096 {
        g.made.drain(..2048);
    }
    g.live.push(pid);
}

/// The child was reaped: kill what is left of its group and sweep.
pub fn done(pid: i32) {
    GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .live
        .retain(|&p| p != pid);
    if let Some(group) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    sweep();
}

/// The step was cancelled while its child `pid` still runs: kill the child's whole tree
/// (a `setsid` grandchild included), its group, then sweep.
pub fn cancel(pid: i32) {
    let table = processes();
    for p in descendants(&table, pid).into_iter().chain([pid]) {
        if let Some(p) = Pid::from_raw(p) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
    }
    if let Some(group) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    sweep();
}

#[derive(Clone, Copy)]
struct Proc {
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
}

/// Every process this user can see: `/proc/<pid>/stat`.
fn processes() -> HashMap<i32, Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

fn descendants(table: &HashMap<i32, Proc>, root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&pid, proc_) in table {
            if proc_.ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// Direct children of this process (of any of its threads), from
/// `/proc/self/task/*/children`: a few small reads instead of a walk of `/proc`.
fn children() -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).ok()?;
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// One process's `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<i32>().ok());
    Some(Proc {
        ppid: num(1)?,
        pgrp: num(2)?,
        session: num(3)?,
        zombie: f.first() == Some(&"Z"),
    })
}

/// Kill and reap every process re-parented to Hoist from a step: its parent was in a
/// group Hoist made for a step, or it left Hoist's session.
pub fn sweep() {
    // Not a subreaper: a step's orphans went to init, none of them is ours to find.
    if !SUBREAPER.load(Ordering::Relaxed) {
        return;
    }
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // Read from `/proc`, not `getsid(2)`: in a container whose session leader lives
    // outside the pid namespace the session id is 0, which `rustix::Pid` cannot hold.
    let Some(my_session) = stat(me).map(|p| p.session) else {
        return;
    };
    // Killing an orphan re-parents its children to us: a few rounds finish the tree.
    for _ in 0..8 {
        let (made, live): (HashSet<i32>, HashSet<i32>) = {
            let g = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
            (
                g.made.iter().copied().collect(),
                g.live.iter().copied().collect(),
            )
        };
        let is_orphan = |pid: i32, p: &Proc| {
            p.ppid == me
                && !live.contains(&pid)
                && (made.contains(&p.pgrp) || p.session != my_session)
        };
        // The common case, nothing left behind, costs a read of our children list.
        let orphans: Vec<i32> = match children() {
            Some(kids) => kids
                .into_iter()
                .filter(|&pid| stat(pid).is_some_and(|p| is_orphan(pid, &p)))
                .collect(),
            None => processes()
                .iter()
                .filter(|(pid, p)| is_orphan(**pid, p))
                .map(|(&pid, _)| pid)
                .collect(),
        };
        if orphans.is_empty() {
            return;
        }
        let table = processes();
        for &o in &orphans {
            for p in descendants(&table, o).into_iter().chain([o]) {
                if let Some(p) = Pid::from_raw(p)
                    && !table
                        .get(&p.as_raw_nonzero().get())
                        .is_some_and(|x| x.zombie)
                {
                    let _ = rustix::process::kill_process(p, Signal::KILL);
                }
            }
        }
        for o in orphans {
            let Some(p) = Pid::from_raw(o) else { continue };
            // Killed just now: reaped within milliseconds (bounded, in case it cannot die).
            for _ in 0..200 {
                match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    _ => break,
                }
            }
        }
    }
}
