//! What our CI can check of `cuttlefish/` without a Cuttlefish host (see cuttlefish/README.md):
//! - the cvd JSON configs parse against our own schema of the fields we use (serde,
//!   `deny_unknown_fields`, `vhost_user_vsock` a string), one config per kernel branch under test,
//!   builds in `@ab/<branch>/<target>` form, one multi-instance config with vsock groups;
//! - scripts and the workflow pass only real `launch_cvd` / `cvd fetch` flags (checked-in lists);
//! - every kernel-fragment symbol exists in the Debian kernels' configs cached by
//!   `tests/real-guest/setup`;
//! - shell scripts (and the workflow's `run:` blocks) pass `bash -n`; the launch script's dry run
//!   passes only listed flags; the e2e driver's data pattern equals the Rust one.
//!
//! What the scripts do when run (swap, the e2e driver against a fake guest) is behaviour:
//! `tests/tests/cuttlefish_scripts.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::{fail_if, files, rel, root};

fn cf() -> PathBuf {
    root().join("cuttlefish")
}

// ------------------------------------------------------------------------------------------------
// cvd JSON: the subset of cuttlefish.cvd.config.EnvironmentSpecification we use. Checked against
// google/android-cuttlefish base/cvd/cuttlefish/host/commands/cvd/cli/parser/load_config.proto
// (stored versions @03fbad96 and @ddbf6b3b; it imports no other proto) and the parser code named
// on each field. cvd parses with JsonStringToMessage and default options
// (cli/parser/cf_flags_validator.cpp@776ac99a), so unknown fields are errors there too.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvSpec {
    /// `optional Common common = 4`.
    common: Common,
    /// `repeated Instance instances = 1`.
    instances: Vec<Instance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    /// `optional string group_name = 1`; cvd accepts `[A-Za-z_][A-Za-z_0-9]*`
    /// (cvd/instances/device_name.cpp@b6cfceb4 `IsValidGroupName`).
    group_name: String,
    /// `optional string host_package = 2`; only `@ab/…` values are fetched
    /// (cli/parser/fetch_config_parser.cpp@9d6bf39c).
    host_package: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Instance {
    /// `optional string name = 1`; cvd accepts `-`-separated pieces of `[A-Za-z_0-9]+`
    /// (cvd/instances/device_name.cpp@b6cfceb4 `IsValidInstanceName`).
    name: String,
    /// `optional string import_template = 9 [json_name = "@import"]`; the names
    /// cli/parser/launch_cvd_templates.cpp@12974beb knows (anything else: "Unknown import value").
    #[serde(rename = "@import")]
    import: Option<Import>,
    /// `optional Vm vm = 2`.
    vm: Vm,
    /// `optional Boot boot = 3`.
    boot: Boot,
    /// `optional Disk disk = 5`.
    disk: Disk,
    /// `optional Connectivity connectivity = 8`.
    connectivity: Option<Connectivity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Import {
    Phone,
    Tablet,
    Tv,
    Wearable,
    Auto,
    Slim,
    Go,
    Foldable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vm {
    /// `optional uint32 cpus = 1`.
    cpus: u32,
    /// `optional uint32 memory_mb = 2`.
    memory_mb: u32,
    /// `optional string setupwizard_mode = 4` (a string, not a proto enum), validated by
    /// common/libs/utils/flags_validator.cpp@ed3f5a80: DISABLED, OPTIONAL or REQUIRED.
    setupwizard_mode: Option<SetupWizard>,
    /// `oneof vmm { Crosvm crosvm = 6; Gem5 gem5 = 7; Qemu qemu = 8; }`.
    crosvm: Crosvm,
}

#[derive(Debug, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum SetupWizard {
    DISABLED,
    OPTIONAL,
    REQUIRED,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Crosvm {
    /// A string `"auto"|"true"|"false"`, not a boolean (android-cuttlefish PR #2725, merged
    /// 2026-06): cli/parser/instance/vm_configs_test.cc@0bd01b8d turns `"true"`/`"false"` into
    /// `--vhost_user_vsock=true,false` and an absent field into `auto`. The two stored
    /// load_config.proto versions (@03fbad96, @ddbf6b3b) predate the PR and lack the field, so a
    /// cvd older than it rejects these configs as having an unknown field.
    vhost_user_vsock: TriState,
    /// `optional bool enable_sandbox = 1` (crosvm's own sandbox; cf_vm_configs.cpp@333b5cc1).
    enable_sandbox: bool,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum TriState {
    Auto,
    True,
    False,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Boot {
    /// `optional Build kernel = 1` (`message Build { optional string build = 1; }`).
    kernel: Kernel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kernel {
    /// `Build.build`; a value without `@ab/` is dropped from the fetch
    /// (fetch_config_parser.cpp@9d6bf39c `GetFetchBuildString`).
    build: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Disk {
    /// `optional string default_build = 1`.
    default_build: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Connectivity {
    /// `optional Vsock vsock = 1`.
    vsock: VsockConn,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockConn {
    /// `message Vsock { optional string guest_group = 1; }` → `--vsock_guest_group`.
    guest_group: String,
}

/// Kernel branches under test: android-mainline and the current GKI branches with Cuttlefish
/// kernel manifests (reference note §4). One config file per branch, named after it.
const KERNEL_BRANCHES: &[&str] = &[
    "android-mainline",
    "android16-6.12",
    "android15-6.6",
    "android14-6.1",
    "android14-5.15",
];

/// `@ab/<branch_or_build_id>/<target>` → (branch or build id, target). cvd fetches only `@ab/`
/// values (fetch_config_parser.cpp@9d6bf39c) and its build strings allow at most one `/`
/// (host/libs/web/android_build_string.cpp@b875672f: "cannot have more than one '/'"), so a
/// specific build is `@ab/<build_id>/<target>`, not `@ab/<branch>/<target>/<build_id>`. We also
/// require the target, which cvd would otherwise default.
fn ab_build(s: &str) -> Result<(String, String), String> {
    let rest = s
        .strip_prefix("@ab/")
        .ok_or_else(|| format!("{s:?} is not an Android CI build (@ab/<branch>/<target>); local paths are not allowed here"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match parts.as_slice() {
        [b, t] if parts.iter().all(|p| ok_part(p)) => Ok((b.to_string(), t.to_string())),
        _ => Err(format!(
            "{s:?} is not @ab/<branch_or_build_id>/<target> (cvd allows one '/')"
        )),
    }
}

/// cvd's group-name rule (cvd/instances/device_name.cpp@b6cfceb4): `[A-Za-z_][A-Za-z_0-9]*`.
fn cvd_group_name_ok(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// cvd's instance-name rule (same file): `-`-separated pieces of `[A-Za-z_0-9]+`.
fn cvd_instance_name_ok(s: &str) -> bool {
    s.split('-')
        .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
}

fn config_files() -> Vec<PathBuf> {
    files(&cf().join("configs"), &|p| {
        p.extension().is_some_and(|e| e == "json")
    })
}

fn load(p: &Path) -> Result<EnvSpec, String> {
    let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", rel(p)))
}

#[test]
fn cvd_configs_match_our_schema() {
    let mut errors = Vec::new();
    let mut branches_seen = BTreeSet::new();
    let mut multi = 0;
    let configs = config_files();
    assert!(!configs.is_empty(), "no cuttlefish/configs/*.json");
    for p in &configs {
        let spec = match load(p) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let file = rel(p);
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if let Err(e) = ab_build(&spec.common.host_package) {
            errors.push(format!("{file}: common.host_package: {e}"));
        }
        if !cvd_group_name_ok(&spec.common.group_name) {
            errors.push(format!(
                "{file}: common.group_name must match cvd's [A-Za-z_][A-Za-z_0-9]*"
            ));
        }
        if spec.instances.is_empty() {
            errors.push(format!("{file}: no instances"));
        }
        let mut names = BTreeSet::new();
        let mut kernels = BTreeSet::new();
        for (i, inst) in spec.instances.iter().enumerate() {
            let at = format!("{file}: instances[{i}] ({})", inst.name);
            if !names.insert(inst.name.clone()) {
                errors.push(format!("{at}: duplicate name"));
            }
            if !cvd_instance_name_ok(&inst.name) {
                errors.push(format!(
                    "{at}: name must be '-'-separated pieces of [A-Za-z_0-9]+ (cvd's rule)"
                ));
            }
            if inst.vm.crosvm.vhost_user_vsock != TriState::True {
                errors.push(format!(
                    "{at}: vm.crosvm.vhost_user_vsock must be \"true\" (the plugin is only used then)"
                ));
            }
            if inst.vm.crosvm.enable_sandbox {
                errors.push(format!(
                    "{at}: enable_sandbox (crosvm's own sandbox) must be false, as launch-local-kernel.sh passes"
                ));
            }
            if inst.vm.cpus == 0 || inst.vm.memory_mb < 2048 {
                errors.push(format!("{at}: vm.cpus / vm.memory_mb too small"));
            }
            if let Err(e) = ab_build(&inst.disk.default_build) {
                errors.push(format!("{at}: disk.default_build: {e}"));
            }
            match ab_build(&inst.boot.kernel.build) {
                Err(e) => errors.push(format!("{at}: boot.kernel.build: {e}")),
                Ok((branch, target)) => {
                    match branch.strip_prefix("aosp_kernel-common-") {
                        Some(kb) => {
                            kernels.insert(kb.to_string());
                        }
                        None => errors.push(format!(
                            "{at}: kernel branch {branch:?} is not aosp_kernel-common-<branch>"
                        )),
                    }
                    if !target.starts_with("kernel_virt_") {
                        errors.push(format!(
                            "{at}: kernel target {target:?} is not a Cuttlefish kernel (kernel_virt_<arch>)"
                        ));
                    }
                }
            }
            if let Some(c) = &inst.connectivity {
                let ok = !c.vsock.guest_group.is_empty()
                    && c.vsock.guest_group.split('+').all(|g| {
                        !g.is_empty() && g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    });
                if !ok {
                    errors.push(format!(
                        "{at}: connectivity.vsock.guest_group {:?} is not g1[+g2...]",
                        c.vsock.guest_group
                    ));
                }
            }
            let _ = &inst.import;
            let _ = &inst.vm.setupwizard_mode;
        }
        if spec.instances.len() > 1 {
            multi += 1;
            if spec.instances.iter().any(|i| i.connectivity.is_none()) {
                errors.push(format!(
                    "{file}: a multi-instance config must put every instance in a vsock group"
                ));
            }
            if kernels.len() > 1 {
                errors.push(format!(
                    "{file}: one launch boots one kernel for all instances"
                ));
            }
        } else if KERNEL_BRANCHES.contains(&stem.as_str()) {
            if kernels.iter().next().map(String::as_str) != Some(stem.as_str()) {
                errors.push(format!(
                    "{file}: named after kernel branch {stem} but boots {kernels:?}"
                ));
            }
            branches_seen.insert(stem.clone());
        } else {
            errors.push(format!(
                "{file}: single-instance configs are named after their kernel branch ({})",
                KERNEL_BRANCHES.join(", ")
            ));
        }
    }
    for b in KERNEL_BRANCHES {
        if !branches_seen.contains(*b) {
            errors.push(format!(
                "no config for kernel branch {b} (cuttlefish/configs/{b}.json)"
            ));
        }
    }
    if multi == 0 {
        errors.push("no multi-instance config with vsock groups".into());
    }
    fail_if(errors, "cuttlefish/configs");
}

#[test]
fn schema_rejects_what_cvd_rejects() {
    let good = r#"{"common": {"group_name": "g", "host_package": "@ab/git_main/t"},
      "instances": [{"name": "a", "vm": {"cpus": 2, "memory_mb": 4096,
        "crosvm": {"vhost_user_vsock": "true", "enable_sandbox": false}},
        "boot": {"kernel": {"build": "@ab/aosp_kernel-common-android-mainline/kernel_virt_x86_64"}},
        "disk": {"default_build": "@ab/git_main/t"}}]}"#;
    serde_json::from_str::<EnvSpec>(good).expect("the minimal config parses");
    // vhost_user_vsock as a boolean: cvd's proto field is a string.
    let boolean = good.replace(
        "\"vhost_user_vsock\": \"true\"",
        "\"vhost_user_vsock\": true",
    );
    assert!(serde_json::from_str::<EnvSpec>(&boolean).is_err());
    // Unknown field (e.g. a kernel_path that does not exist in the schema).
    let unknown = good.replace(
        "\"build\": \"@ab",
        "\"kernel_path\": \"/tmp/bzImage\", \"build\": \"@ab",
    );
    assert!(serde_json::from_str::<EnvSpec>(&unknown).is_err());
    // Local path as the kernel build: cvd would silently drop it.
    assert!(ab_build("/home/me/out/dist/bzImage").is_err());
    // A specific build is <build_id>/<target>; cvd rejects a second '/'.
    assert!(ab_build("@ab/12345678/kernel_virt_x86_64").is_ok());
    assert!(ab_build("@ab/aosp_kernel-common-android16-6.12/kernel_virt_x86_64/12345").is_err());
    assert!(cvd_group_name_ok("vsock14x515") && !cvd_group_name_ok("14x515"));
    assert!(cvd_instance_name_ok("vsock-14-6-1") && !cvd_instance_name_ok("vsock.14"));
}

// ------------------------------------------------------------------------------------------------
// Flags

fn flag_list(name: &str) -> BTreeSet<String> {
    let p = cf().join(name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", rel(&p)))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `--name` / `--name=value` tokens of a shell line (not inside a comment).
fn flags_in(line: &str) -> Vec<String> {
    let code = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        let boundary = i == 0 || b" (\t\"'".contains(&b[i - 1]);
        if boundary && b[i] == b'-' && b[i + 1] == b'-' && b[i + 2].is_ascii_alphabetic() {
            let start = i + 2;
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-') {
                j += 1;
            }
            out.push(code[start..j].to_string());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The flag tokens a file passes to a tool: lines inside `# <tool> flags: begin` … `end` blocks,
/// and any line (with its `\` continuations) that invokes the tool directly.
fn tool_flags(text: &str, tool: &str, invocations: &[&str]) -> Vec<(usize, String)> {
    let begin = format!("# {tool} flags: begin");
    let end = format!("# {tool} flags: end");
    let mut out = Vec::new();
    let mut in_block = false;
    let mut continuing = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with(&begin) {
            in_block = true;
            continue;
        }
        if t.starts_with(&end) {
            in_block = false;
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        let invokes = invocations.iter().any(|inv| {
            t.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '(')
                .any(|w| w == *inv || w.ends_with(&format!("/{inv}")))
        });
        if in_block || invokes || continuing {
            out.extend(flags_in(t).into_iter().map(|f| (n + 1, f)));
        }
        continuing = (invokes || continuing) && t.ends_with('\\');
    }
    out
}

fn script_files() -> Vec<PathBuf> {
    files(&cf(), &|p| {
        p.extension()
            .is_some_and(|e| e == "sh" || e == "yml" || e == "yaml")
    })
}

#[test]
fn scripts_pass_only_real_launch_cvd_and_fetch_flags() {
    let launch = flag_list("launch_cvd_flags.txt");
    let fetch = flag_list("cvd_fetch_flags.txt");
    assert!(launch.contains("vhost_user_vsock") && launch.contains("kernel_path"));
    let mut errors = Vec::new();
    let mut launch_uses = 0;
    for p in script_files() {
        let text = std::fs::read_to_string(&p).unwrap();
        for (line, f) in tool_flags(&text, "launch_cvd", &["launch_cvd"]) {
            launch_uses += 1;
            if !launch.contains(&f) {
                errors.push(format!(
                    "{}:{line}: --{f} is not in cuttlefish/launch_cvd_flags.txt",
                    rel(&p)
                ));
            }
        }
        for (line, f) in tool_flags(&text, "cvd fetch", &["fetch_cvd"]) {
            if !fetch.contains(&f) {
                errors.push(format!(
                    "{}:{line}: --{f} is not in cuttlefish/cvd_fetch_flags.txt",
                    rel(&p)
                ));
            }
        }
        // `cvd fetch` written on one line outside a block.
        for (n, l) in text.lines().enumerate() {
            if l.trim_start().starts_with("cvd fetch ") {
                for f in flags_in(l) {
                    if !fetch.contains(&f) {
                        errors.push(format!(
                            "{}:{}: --{f} is not in cuttlefish/cvd_fetch_flags.txt",
                            rel(&p),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    if launch_uses == 0 {
        errors
            .push("no script passes launch_cvd flags (cuttlefish/launch-local-kernel.sh?)".into());
    }
    fail_if(errors, "launch_cvd / cvd fetch flags");
}

#[test]
fn flag_scanner_sees_what_it_must() {
    let text = "x\n# launch_cvd flags: begin\nargs=(\n  --vm_manager=crosvm\n  --bogus_flag\n)\n# launch_cvd flags: end\n\
                HOME=$d $d/bin/launch_cvd --cpus=2 \\\n   --memory_mb=1 # --ignored\nfoo --not_this\n";
    let got: Vec<String> = tool_flags(text, "launch_cvd", &["launch_cvd"])
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    assert_eq!(got, ["vm_manager", "bogus_flag", "cpus", "memory_mb"]);
}

#[test]
fn launch_script_dry_run() {
    let launch = flag_list("launch_cvd_flags.txt");
    let out = Command::new("bash")
        .arg(cf().join("launch-local-kernel.sh"))
        .args([
            "--host-package",
            "/nonexistent/pkg",
            "--kernel",
            "/k/bzImage",
            "--num-instances",
            "3",
            "--vsock-groups",
            "g1,g1+g2,g2",
            "--pkt-buf-size",
            "65536",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dry run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flags = flags_in(&stdout);
    for f in &flags {
        assert!(
            launch.contains(f),
            "dry run passes --{f}, not a listed launch_cvd flag"
        );
    }
    for want in [
        "--vm_manager=crosvm",
        "--vhost_user_vsock=true",
        "--kernel_path=/k/bzImage",
        "--initramfs_path=/k/initramfs.img",
        "--num_instances=3",
    ] {
        assert!(stdout.contains(want), "dry run lacks {want}: {stdout}");
    }
    assert!(stdout.contains("HOME=/nonexistent/pkg"), "{stdout}");
}

// ------------------------------------------------------------------------------------------------
// Kernel fragment

fn debian_kernel_configs() -> Vec<PathBuf> {
    let cache = std::env::var_os("VSOCK_REAL_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
                .join("vsock-plugin")
        });
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(cache.join("kernels")) {
        for e in rd.flatten() {
            if let Ok(boot) = std::fs::read_dir(e.path().join("boot")) {
                for b in boot.flatten() {
                    if b.file_name().to_string_lossy().starts_with("config-") {
                        out.push(b.path());
                    }
                }
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no cached Debian kernel config under {}/kernels/*/boot/config-*: run tests/real-guest/setup \
         first (it downloads and unpacks the 6.1 and 6.12 kernels)",
        cache.display()
    );
    out.sort();
    out
}

/// Needs the kernels `tests/real-guest/setup` downloads, so a fresh clone's `cargo test` does not
/// run it; `tests/run` runs it (`--ignored`) right after setup.
#[test]
#[ignore = "needs the Debian kernel configs tests/real-guest/setup downloads (tests/run runs it)"]
fn kernel_fragment_symbols_exist_in_debian_kernels() {
    let frags = files(&cf().join("kernel"), &|p| {
        p.extension().is_some_and(|e| e == "fragment")
    });
    assert!(!frags.is_empty(), "no cuttlefish/kernel/*.fragment");
    let configs = debian_kernel_configs();
    let mut errors = Vec::new();
    for frag in &frags {
        let text = std::fs::read_to_string(frag).unwrap();
        let mut symbols = Vec::new();
        for (n, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || (l.starts_with('#') && !l.ends_with("is not set")) {
                continue;
            }
            let sym = l
                .strip_prefix("# ")
                .and_then(|s| s.strip_suffix(" is not set"))
                .or_else(|| l.split_once('=').map(|(s, _)| s));
            match sym {
                Some(s) if s.starts_with("CONFIG_") => symbols.push(s.to_string()),
                _ => errors.push(format!("{}:{}: not a Kconfig line: {l}", rel(frag), n + 1)),
            }
        }
        if symbols.is_empty() {
            errors.push(format!("{}: no symbols", rel(frag)));
        }
        for c in &configs {
            let cfg = std::fs::read_to_string(c).unwrap();
            let known: BTreeSet<&str> = cfg
                .lines()
                .filter_map(|l| {
                    l.split_once('=').map(|(s, _)| s).or_else(|| {
                        l.strip_prefix("# ")
                            .and_then(|s| s.strip_suffix(" is not set"))
                    })
                })
                .collect();
            for s in &symbols {
                if !known.contains(s.as_str()) {
                    errors.push(format!(
                        "{}: {s} does not exist in {}",
                        rel(frag),
                        c.display()
                    ));
                }
            }
        }
    }
    eprintln!(
        "checked against: {}",
        configs
            .iter()
            .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    fail_if(errors, "kernel fragment");
}

// ------------------------------------------------------------------------------------------------
// Shell

/// `run: |` blocks of a GitHub Actions workflow, as (first line number, script).
fn workflow_run_blocks(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        if let Some(rest) = t.strip_prefix("run:") {
            let rest = rest.trim();
            if rest == "|" || rest == "|-" || rest == ">" {
                let indent = l.len() - l.trim_start().len();
                let mut body = String::new();
                let start = i + 2;
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    body.push_str(lines[i]);
                    body.push('\n');
                    i += 1;
                }
                out.push((start, body));
                continue;
            } else if !rest.is_empty() {
                out.push((i + 1, rest.to_string()));
            }
        }
        i += 1;
    }
    out
}

fn bash_n(script: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .args(["-n", "-c", script])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn shell_scripts_pass_bash_n() {
    let mut errors = Vec::new();
    let mut n = 0;
    for p in files(&cf(), &|p| p.extension().is_some_and(|e| e == "sh")) {
        n += 1;
        let text = std::fs::read_to_string(&p).unwrap();
        if !text.starts_with("#!/usr/bin/env bash") && !text.starts_with("#!/bin/bash") {
            errors.push(format!("{}: no bash shebang", rel(&p)));
        }
        if let Err(e) = bash_n(&text) {
            errors.push(format!("{}: bash -n: {e}", rel(&p)));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(&p).unwrap().permissions().mode() & 0o111 == 0 {
                errors.push(format!("{}: not executable", rel(&p)));
            }
        }
    }
    assert!(n >= 2, "expected the swap and launch scripts");
    for p in files(&cf(), &|p| p.extension().is_some_and(|e| e == "yml")) {
        let text = std::fs::read_to_string(&p).unwrap();
        let blocks = workflow_run_blocks(&text);
        if blocks.is_empty() {
            errors.push(format!("{}: no run: blocks found", rel(&p)));
        }
        for (line, b) in blocks {
            // ${{ ... }} expressions are substituted by Actions before bash sees them.
            let b = b.replace("${{", "\"X").replace("}}", "\"");
            if let Err(e) = bash_n(&b) {
                errors.push(format!("{}:{line}: run block: bash -n: {e}", rel(&p)));
            }
        }
    }
    fail_if(errors, "shell syntax");
}

#[test]
fn workflow_matrix_names_the_configs_and_existing_files() {
    let wf = cf().join("ci/workflow.yml");
    let text = std::fs::read_to_string(&wf).unwrap();
    let mut errors = Vec::new();
    // The matrix: "- <name>" items under "config:".
    let mut in_matrix = false;
    let mut matrix = BTreeSet::new();
    for l in text.lines() {
        let t = l.trim();
        if t == "config:" {
            in_matrix = true;
            continue;
        }
        if in_matrix {
            match t.strip_prefix("- ") {
                Some(name) if !name.contains(':') => {
                    matrix.insert(name.to_string());
                }
                _ => in_matrix = false,
            }
        }
    }
    let configs: BTreeSet<String> = config_files()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    if matrix != configs {
        errors.push(format!(
            "{}: matrix {matrix:?} != cuttlefish/configs {configs:?}",
            rel(&wf)
        ));
    }
    // Repository files the workflow names.
    for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        if word.starts_with("cuttlefish/") && !word.contains('$') && !root().join(word).exists() {
            errors.push(format!("{}: names {word}, which does not exist", rel(&wf)));
        }
    }
    for bin in ["vsock-guest-agent", "vsock-plugin"] {
        if !text.contains(bin) {
            errors.push(format!("{}: does not build/use {bin}", rel(&wf)));
        }
    }
    if !root().join("tests/src/bin/vsock-guest-agent.rs").is_file() {
        errors.push("tests/src/bin/vsock-guest-agent.rs (the guest agent) is gone".into());
    }
    fail_if(errors, "workflow");
}

#[test]
fn e2e_driver_pattern_equals_the_rust_pattern() {
    use vsock_plugin_tests::real_guest::proto::{hex, pattern_sha256};
    let driver = cf().join("ci/guest_agent_driver.py");
    for (seed, len) in [(1u64, 0u64), (11, 1), (12, 7), (13, 65_537), (7, 300_001)] {
        let out = Command::new("python3")
            .arg(&driver)
            .args(["--pattern-sha256", &seed.to_string(), &len.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("python3 is needed for the Cuttlefish driver check: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            hex(&pattern_sha256(seed, len)),
            "guest_agent_driver.py pattern differs from tests/src/real_guest/proto.rs (seed {seed}, len {len})"
        );
    }
}
