//! `seccomp-run --policy stock|patched [--log] [--drop SYSCALL]... [--report FILE] -- PROGRAM ARGS...`
//!
//! Runs PROGRAM under Cuttlefish's `vhost_device_vsock` sandbox policy (stock, or with the patch in
//! `cuttlefish/sandbox/`) as a seccomp filter ([`policy`], [`filter`], [`launcher`],
//! [`supervisor`]). A call outside the policy kills PROGRAM and names the syscall (exit status
//! 159 = 128 + SIGSYS); with `--log` it is allowed, counted and listed at the end (and the run
//! still ends with 159). `--drop` removes a syscall from the policy (to show the check catches a
//! missing one).

#[cfg(target_arch = "x86_64")]
mod filter;
#[cfg(target_arch = "x86_64")]
mod launcher;
#[cfg(target_arch = "x86_64")]
mod names;
#[cfg(target_arch = "x86_64")]
mod policy;
#[cfg(target_arch = "x86_64")]
mod supervisor;

#[cfg(target_arch = "x86_64")]
fn main() {
    use policy::Policy;
    let usage = "usage: seccomp-run --policy stock|patched [--log] [--drop SYSCALL]... \
                 [--report FILE] -- PROGRAM [ARGS...]";
    let mut args = std::env::args_os().skip(1);
    let mut policy = None;
    let mut log = false;
    let mut drop = Vec::new();
    let mut report = None;
    let mut program = None;
    let bad = |msg: String| -> ! {
        eprintln!("seccomp-run: {msg}\n{usage}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--policy") => {
                let v = args.next().unwrap_or_default();
                policy = Some(
                    Policy::parse(&v.to_string_lossy())
                        .unwrap_or_else(|| bad(format!("unknown policy {v:?}"))),
                );
            }
            Some("--log") => log = true,
            Some("--drop") => {
                let v = args.next().unwrap_or_default();
                let nr = names::number(&v.to_string_lossy())
                    .unwrap_or_else(|| bad(format!("unknown syscall {v:?}")));
                drop.push(nr);
            }
            Some("--report") => report = args.next().map(Into::into),
            Some("--") => {
                program = args.next();
                break;
            }
            _ => bad(format!("unexpected argument {a:?}")),
        }
    }
    let (Some(policy), Some(program)) = (policy, program) else {
        bad("--policy and a program are required".into())
    };
    let opts = launcher::Options {
        policy,
        log,
        drop,
        report,
        program,
        args: args.collect(),
    };
    match launcher::run(&opts) {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("seccomp-run: {e}");
            std::process::exit(126)
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("seccomp-run: the policy is transcribed for x86_64 only");
    std::process::exit(126)
}
