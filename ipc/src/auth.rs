//! Caller allow-list: which uids may use the control services.

use std::collections::BTreeSet;

/// Uids allowed to call the control services. Over binder RPC the uid is the socket peer's
/// (`SO_PEERCRED`), over kernel binder the kernel-vouched calling uid. `u32::MAX` (no identity)
/// is never allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    uids: BTreeSet<u32>,
}

impl AllowList {
    /// Only these uids.
    pub fn new(uids: impl IntoIterator<Item = u32>) -> Self {
        AllowList {
            uids: uids.into_iter().filter(|&u| u != u32::MAX).collect(),
        }
    }

    /// Whether `uid` may call.
    pub fn allows(&self, uid: u32) -> bool {
        uid != u32::MAX && self.uids.contains(&uid)
    }

    /// The allowed uids, ascending.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.uids.iter().copied()
    }
}

impl Default for AllowList {
    /// root and the plugin's own uid.
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        AllowList::new([0, me])
    }
}
