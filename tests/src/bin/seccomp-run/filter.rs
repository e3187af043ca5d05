//! The two seccomp filters the launcher installs, built with seccompiler from [`super::policy`]:
//! filter 1 answers `clone3` with ENOSYS (sandbox2's default policy) and allows everything else;
//! filter 2 allows the policy and sends every other call to the launcher as a seccomp user
//! notification. The kernel takes the strongest action of all filters (ERRNO beats USER_NOTIF
//! beats ALLOW), so `clone3` gets ENOSYS whatever filter 2 says.

use std::io;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::policy::{self, Policy};

/// Marks filter 2's mismatch action in seccompiler's output, replaced by USER_NOTIF.
const MISMATCH_MARK: u32 = 0x5ecc;

/// The two filters: (clone3 → ENOSYS, policy with mismatch → USER_NOTIF).
pub fn build_filters(policy: Policy, drop: &[i64]) -> io::Result<(BpfProgram, BpfProgram)> {
    let err = |e: seccompiler::BackendError| io::Error::other(format!("seccompiler: {e}"));
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(policy::CLONE3_ERRNO),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    let mut rules = policy::rules(policy);
    for &nr in drop {
        rules.remove(nr);
    }
    let main = SeccompFilter::new(
        rules.into_seccompiler(),
        SeccompAction::Trace(MISMATCH_MARK),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    let clone3: BpfProgram = clone3.try_into().map_err(err)?;
    let mut main: BpfProgram = main.try_into().map_err(err)?;
    let mark = libc::SECCOMP_RET_TRACE | MISMATCH_MARK;
    let mut marked = 0;
    for insn in &mut main {
        if insn.code == (libc::BPF_RET | libc::BPF_K) as u16 && insn.k == mark {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
            marked += 1;
        }
    }
    if marked == 0 {
        return Err(io::Error::other(
            "filter has no mismatch action to redirect",
        ));
    }
    Ok((clone3, main))
}

pub fn install(prog: &BpfProgram, flags: libc::c_ulong) -> io::Result<i32> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, alive for the call; seccompiler's sock_filter has the kernel
    // layout (repr(C) u16, u8, u8, u32).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}
