//! Consistency of the Soong build (`Android.bp`, `TEST_MAPPING`) with the cargo workspace.
//!
//! Soong itself does not run here; what plain Linux CI can check is checked:
//! - every cargo crate (package) of the workspace has its Soong module(s): its lib as a
//!   `rust_library*` with the same `crate_root` and crate name (the AIDL crate as the
//!   `aidl_interface`'s Rust backend), every bin as a `rust_binary*` unless listed in
//!   [`CARGO_ONLY_TARGETS`];
//! - every Rust dependency of a crate (its `Cargo.toml`, read through `cargo metadata`, so
//!   `workspace = true` and renames are resolved) maps to the AOSP module in [`DEP_TABLE`];
//!   cargo-only crates never appear; device-only / host-only modules sit under the right `target`;
//!   nothing else is linked;
//! - every path named in `Android.bp` exists (`srcs`, `crate_root`, `protos`, `data`,
//!   `local_include_dir`), every `.proto` and `.aidl` file is covered, and the AIDL versions agree
//!   with `ipc/aidl/aidl_api/` and `ipc/aidl/build.rs`;
//! - every test named in `TEST_MAPPING` is a test module of `Android.bp`.
//!
//! A mismatch fails with one line per problem, each naming the module (or crate).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use android_bp::{BluePrint, Value};

use super::{fail_if, files, rel, root};

// ------------------------------------------------------------------------------------------------
// The tables

/// Where a cargo dependency comes from in an AOSP tree.
#[derive(Debug, Clone, Copy)]
enum Aosp {
    /// The same module on host and device.
    Module(&'static str),
    /// Only under `target: { host: { rustlibs } }` (the module or its use is host-only).
    HostOnly(&'static str),
    /// Only under `target: { android: { rustlibs } }` (the module has no host variant).
    DeviceOnly(&'static str),
    /// Not in Soong at all; the reason says what replaces it.
    CargoOnly(&'static str),
}

/// How sure the mapping is (documentation; the report and `cuttlefish/README.md` repeat it).
#[derive(Debug, Clone, Copy)]
enum Sure {
    /// Named in AOSP Android.bp files we have read (reference note §5, vhost_device_vsock's rustlibs).
    Seen,
    /// Follows AOSP's `lib<crate>` rule, the crate is believed to be in android-crates-io; unverified.
    Assumed,
    /// Seen, but its `visibility` does not include us: linking needs a change in AOSP.
    SeenRestricted(&'static str),
}

/// cargo package name → AOSP module. Every dependency (normal, dev, build) of every workspace crate
/// must have an entry; path dependencies inside the workspace map to that crate's own module.
const DEP_TABLE: &[(&str, Aosp, Sure)] = &[
    ("vhost", Aosp::Module("libvhost_android"), Sure::Seen),
    (
        "vm-memory",
        Aosp::Module("libvm_memory_android"),
        Sure::Seen,
    ),
    ("virtio-queue", Aosp::Module("libvirtio_queue"), Sure::Seen),
    ("vmm-sys-util", Aosp::Module("libvmm_sys_util"), Sure::Seen),
    ("libc", Aosp::Module("liblibc"), Sure::Seen),
    ("log", Aosp::Module("liblog_rust"), Sure::Seen),
    ("serde", Aosp::Module("libserde"), Sure::Seen),
    ("clap", Aosp::Module("libclap"), Sure::Seen),
    ("thiserror", Aosp::Module("libthiserror"), Sure::Seen),
    ("protobuf", Aosp::Module("libprotobuf"), Sure::Seen),
    (
        "protobuf-json-mapping",
        Aosp::Module("libprotobuf_json_mapping"),
        Sure::Seen,
    ),
    (
        "sha2",
        Aosp::Module("libsha2"),
        Sure::SeenRestricted("visibility: //external/rust/android-crates-io/crates/smithay only"),
    ),
    ("tempfile", Aosp::Module("libtempfile"), Sure::Assumed),
    (
        "android_logger",
        Aosp::DeviceOnly("libandroid_logger"),
        Sure::Seen,
    ),
    // Host variant only: the Cuttlefish backend runs on the host and logs to stderr.
    ("env_logger", Aosp::HostOnly("libenv_logger"), Sure::Seen),
    (
        "rsbinder",
        Aosp::CargoOnly("libbinder_rs via cfg(soong) (ipc/src/platform/libbinder.rs)"),
        Sure::Seen,
    ),
    (
        "rsbinder-aidl",
        Aosp::CargoOnly("aidl_interface generates the Rust stubs"),
        Sure::Seen,
    ),
    (
        "protobuf-codegen",
        Aosp::CargoOnly("rust_protobuf generates the messages"),
        Sure::Seen,
    ),
    // Dev-dependencies of the checks themselves (this file): cargo-only.
    (
        "android_bp",
        Aosp::CargoOnly("cargo-side check of Android.bp"),
        Sure::Seen,
    ),
    (
        "serde_json",
        Aosp::CargoOnly("cargo-side checks of JSON configs"),
        Sure::Seen,
    ),
    // The seccomp-run tool (tests/src/bin/seccomp-run/): Cuttlefish's sandbox policy as a filter.
    (
        "seccompiler",
        Aosp::CargoOnly("seccomp-run, the cargo-side sandbox policy check"),
        Sure::Seen,
    ),
];

/// Modules a crate links in Soong without a cargo dependency of the same name.
const SOONG_ONLY: &[(&str, &str, &str)] = &[(
    "vsock-plugin-ipc",
    "libbinder_rs",
    "replaces rsbinder under cfg(soong)",
)];

/// Cargo targets that have no Soong module on purpose.
const CARGO_ONLY_TARGETS: &[(&str, &str, &str)] = &[
    (
        "vsock-plugin-tests",
        "real-guest",
        "QEMU + Debian-kernel harness; needs apt/QEMU, not an Android test",
    ),
    (
        "vsock-plugin-tests",
        "seccomp-run",
        "cargo-side check of the plugin against Cuttlefish's sandbox policy (seccompiler)",
    ),
    (
        "vsock-plugin-tests",
        "vsock-bench",
        "benchmark against the cargo-built reference backend; a developer tool",
    ),
];

/// Packages whose bins are developer tools: a bin without a module is reported, not failed (the
/// ones Soong needs, e.g. the guest agent, have modules and are checked like any other).
const TOOL_BIN_PACKAGES: &[&str] = &["vsock-plugin-tests"];

/// Cargo test targets without a Soong test module, on purpose.
const CARGO_ONLY_TESTS: &[(&str, &str, &str)] = &[
    (
        "vsock-plugin-ipc",
        "*",
        "binder RPC over Unix sockets through rsbinder; Soong's ipc is kernel binder only",
    ),
    (
        "vsock-plugin-proto",
        "compat",
        "reads golden files and schema.lock via CARGO_MANIFEST_DIR",
    ),
    (
        "vsock-plugin-tests",
        "consistency",
        "checks the repository's own files: Soong, cuttlefish/, README (cargo side)",
    ),
    (
        "vsock-plugin-tests",
        "cuttlefish_scripts",
        "runs cuttlefish/ scripts with bash and python3 (cargo side)",
    ),
    (
        "vsock-plugin-tests",
        "control_plane",
        "binder RPC on a Unix socket (rsbinder); Soong's ipc is kernel binder only",
    ),
    (
        "vsock-plugin-tests",
        "sandbox_stock",
        "runs the plugin under the seccomp-run tool (CARGO_BIN_EXE), a cargo-only bin",
    ),
    (
        "vsock-plugin-tests",
        "sandbox_patched",
        "runs the plugin under the seccomp-run tool (CARGO_BIN_EXE), a cargo-only bin",
    ),
    (
        "vsock-plugin-tests",
        "sandbox_check",
        "runs the plugin under the seccomp-run tool (CARGO_BIN_EXE), a cargo-only bin",
    ),
    (
        "vsock-plugin-tests",
        "scale",
        "long-running load test; over tradefed's 5 min default",
    ),
    (
        "vsock-plugin-tests",
        "iotlb",
        "needs the plugin's `iotlb` feature, which Soong leaves off while AOSP's \
         libvm_memory_android lacks `iommu` (see AOSP_CRATES)",
    ),
];

/// Strings that must not appear anywhere in Android.bp values (cargo-only machinery).
const FORBIDDEN_IN_BP: &[&str] = &["rsbinder", "protobuf_codegen", "protobuf-codegen"];

/// One crate as AOSP builds it: `cargo_pkg_version` and `features` of its module in
/// `external/rust/android-crates-io/crates/<name>/Android.bp`.
struct AospCrate {
    name: &'static str,
    version: &'static str,
    features: &'static [&'static str],
    /// `None`: Cargo.lock pins the same version. `Some(why)`: it differs, and why that is safe.
    differs: Option<&'static str>,
}

/// What an AOSP tree compiles our rust-vmm and protobuf dependencies as (read from the CodeLinaro
/// mirror of android-crates-io, upgrade commit 9171eb57c0a430d29a1588e68881774989e89c3f of
/// 2026-08-21: vm-memory 0.18.0, virtio-queue 0.18.0, vhost 0.17.0 requiring vm-memory 0.18.0).
/// Soong ignores semver, so what must hold is that our sources compile against these versions and
/// features: tests/aosp-crates builds them so, with the rest of AOSP's crate set.
const AOSP_CRATES: &[AospCrate] = &[
    AospCrate {
        name: "vhost",
        version: "0.17.0",
        features: &["default", "vhost-user", "vhost-user-backend"],
        differs: None,
    },
    AospCrate {
        name: "vm-memory",
        version: "0.18.0",
        // No `iommu`: the plugin's `iotlb` feature (IOTLB translation) stays off in Soong.
        features: &[
            "arc-swap",
            "backend-atomic",
            "backend-bitmap",
            "backend-mmap",
            "default",
            "rawfd",
        ],
        differs: None,
    },
    AospCrate {
        name: "virtio-queue",
        // METADATA and .cargo-checksum.json (package hash = crates.io's 0.18.0) at 9171eb57.
        version: "0.18.0",
        features: &[],
        differs: None,
    },
    AospCrate {
        name: "protobuf",
        version: "3.7.2",
        features: &["bytes"],
        differs: None,
    },
    AospCrate {
        // crates/clap/Android.bp: cargo_pkg_version 4.6.1, edition 2024.
        name: "clap",
        version: "4.6.1",
        features: &["derive", "error-context", "help", "std", "string", "usage"],
        differs: None,
    },
];

// ------------------------------------------------------------------------------------------------
// Loading

/// One module with its `defaults` merged in.
#[derive(Debug, Clone)]
struct SoongModule {
    typ: String,
    name: String,
    /// Directory of the Android.bp that defines it (paths in it are relative to this).
    dir: PathBuf,
    bp: String,
    props: HashMap<String, Value>,
}

impl SoongModule {
    fn string(&self, key: &str) -> Option<&str> {
        match self.props.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }
    fn strings(&self, key: &str) -> Vec<String> {
        strings_of(self.props.get(key))
    }
    fn bool(&self, key: &str) -> Option<bool> {
        match self.props.get(key) {
            Some(Value::Boolean(b)) => Some(*b),
            _ => None,
        }
    }
    fn map_path(&self, path: &[&str]) -> Option<&Value> {
        let mut v = self.props.get(path[0])?;
        for k in &path[1..] {
            match v {
                Value::Map(m) => v = m.0.get(*k)?,
                _ => return None,
            }
        }
        Some(v)
    }
    /// rustlibs by scope: "common", then one entry per `target.<name>`.
    fn rustlibs(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out = BTreeMap::new();
        out.insert(
            "common".to_string(),
            self.strings("rustlibs").into_iter().collect(),
        );
        if let Some(Value::Map(targets)) = self.props.get("target") {
            for (t, v) in targets.0.iter() {
                if let Value::Map(m) = v {
                    let libs: BTreeSet<String> =
                        strings_of(m.0.get("rustlibs")).into_iter().collect();
                    if !libs.is_empty() {
                        out.insert(t.clone(), libs);
                    }
                }
            }
        }
        out
    }
    fn all_rustlibs(&self) -> BTreeSet<String> {
        self.rustlibs().into_values().flatten().collect()
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
    fn crate_root(&self) -> Option<PathBuf> {
        self.string("crate_root").map(|p| self.path(p))
    }
    fn is_rust(&self) -> bool {
        self.typ.starts_with("rust_")
    }
    fn is_test(&self) -> bool {
        self.typ.starts_with("rust_test")
    }
    fn is_host_capable(&self) -> bool {
        self.typ.ends_with("_host") || self.bool("host_supported") == Some(true)
    }
}

fn strings_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Blueprint property merge as Soong's defaults do it: lists append, maps merge, scalars: the
/// module's own value wins.
fn merge(base: &mut HashMap<String, Value>, over: &HashMap<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b.iter().cloned()),
            (Some(Value::Map(a)), Value::Map(b)) => merge(&mut a.0, &b.0),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// All Android.bp files of the repository (the top-level one plus any in subdirectories).
fn bp_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name.starts_with('.') || name == "target" {
                    continue;
                }
                walk(&p, out);
            } else if name == "Android.bp" {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

struct Soong {
    modules: Vec<SoongModule>,
}

impl Soong {
    fn load() -> Soong {
        let files = bp_files();
        assert!(
            files.contains(&root().join("Android.bp")),
            "no top-level Android.bp"
        );
        let mut raw = Vec::new();
        for f in &files {
            let bp = BluePrint::from_file(f)
                .unwrap_or_else(|e| panic!("{}: Blueprint parse error: {e}", rel(f)));
            for m in bp.modules {
                raw.push((f.clone(), m));
            }
        }
        let defaults: HashMap<String, HashMap<String, Value>> = raw
            .iter()
            .filter(|(_, m)| m.typ.ends_with("_defaults"))
            .filter_map(|(_, m)| Some((m.get_string("name")?.clone(), m.entries.clone())))
            .collect();
        fn resolve(
            entries: &HashMap<String, Value>,
            defaults: &HashMap<String, HashMap<String, Value>>,
            depth: usize,
        ) -> HashMap<String, Value> {
            assert!(depth < 16, "defaults cycle");
            let mut out = HashMap::new();
            for d in strings_of(entries.get("defaults")) {
                let Some(def) = defaults.get(&d) else {
                    panic!("unknown defaults module {d:?}");
                };
                let resolved = resolve(def, defaults, depth + 1);
                merge(&mut out, &resolved);
            }
            let mut own = entries.clone();
            own.remove("defaults");
            merge(&mut out, &own);
            out
        }
        let modules = raw
            .iter()
            .map(|(f, m)| SoongModule {
                typ: m.typ.clone(),
                name: m.get_string("name").cloned().unwrap_or_default(),
                dir: f.parent().unwrap().to_path_buf(),
                bp: rel(f),
                props: resolve(&m.entries, &defaults, 0),
            })
            .collect();
        Soong { modules }
    }

    fn get(&self, name: &str) -> Option<&SoongModule> {
        self.modules.iter().find(|m| m.name == name)
    }

    fn rust_modules(&self) -> impl Iterator<Item = &SoongModule> {
        self.modules
            .iter()
            .filter(|m| m.is_rust() && !m.typ.ends_with("_defaults"))
    }

    fn aidl_interfaces(&self) -> impl Iterator<Item = &SoongModule> {
        self.modules.iter().filter(|m| m.typ == "aidl_interface")
    }

    /// Names of Rust crates modules defined in these files provide (rust modules + AIDL backends).
    fn defined_rust_names(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.rust_modules().map(|m| m.name.clone()).collect();
        for a in self.aidl_interfaces() {
            out.extend(aidl_rust_modules(a));
        }
        out
    }
}

/// The Rust backend module names an aidl_interface generates: `<name>-V<N>-rust` per frozen version,
/// `<name>-V<N+1>-rust` for an unfrozen tip, `<name>-rust` when unstable.
fn aidl_rust_modules(a: &SoongModule) -> Vec<String> {
    let versions = aidl_versions(a);
    if versions.is_empty() {
        return vec![format!("{}-rust", a.name)];
    }
    let mut out: Vec<String> = versions
        .iter()
        .map(|v| format!("{}-V{v}-rust", a.name))
        .collect();
    if a.bool("frozen") != Some(true) {
        out.push(format!(
            "{}-V{}-rust",
            a.name,
            versions.iter().max().unwrap() + 1
        ));
    }
    out
}

fn aidl_versions(a: &SoongModule) -> Vec<u32> {
    let mut v: Vec<u32> = match a.props.get("versions_with_info") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::Map(m) => match m.0.get("version") {
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    v.extend(
        a.strings("versions")
            .iter()
            .filter_map(|s| s.parse::<u32>().ok()),
    );
    v
}

/// The module a dependent crate links for this aidl_interface: the latest version (frozen) or the
/// development tip.
fn aidl_current_rust_module(a: &SoongModule) -> String {
    aidl_rust_modules(a).pop().unwrap()
}

// cargo metadata ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Dep {
    name: String,
    kind: String, // "normal" | "dev" | "build"
    target: Option<String>,
    path: Option<PathBuf>,
    features: Vec<String>,
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    kinds: Vec<String>,
    src: PathBuf,
}

#[derive(Debug, Clone)]
struct Package {
    name: String,
    dir: PathBuf,
    deps: Vec<Dep>,
    targets: Vec<Target>,
    /// The package's own cargo features: name → what each enables (e.g. `vm-memory/iommu`).
    features: BTreeMap<String, Vec<String>>,
    version: String,
}

fn cargo_packages() -> Vec<Package> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: BTreeSet<String> = v["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
            Package {
                name: p["name"].as_str().unwrap().to_string(),
                dir: manifest.parent().unwrap().to_path_buf(),
                deps: p["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| Dep {
                        name: d["name"].as_str().unwrap().to_string(),
                        kind: d["kind"].as_str().unwrap_or("normal").to_string(),
                        target: d["target"].as_str().map(str::to_string),
                        path: d["path"].as_str().map(PathBuf::from),
                        features: strs(&d["features"]),
                    })
                    .collect(),
                version: p["version"].as_str().unwrap_or_default().to_string(),
                features: p["features"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), strs(v)))
                    .collect(),
                targets: p["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| Target {
                        name: t["name"].as_str().unwrap().to_string(),
                        kinds: t["kind"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|k| k.as_str().unwrap().to_string())
                            .collect(),
                        src: PathBuf::from(t["src_path"].as_str().unwrap()),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn crate_ident(cargo_name: &str) -> String {
    cargo_name.replace('-', "_")
}

// ------------------------------------------------------------------------------------------------
// Module ↔ crate

/// The Soong modules that build a workspace package's lib and bins (not tests).
struct CrateModules<'a> {
    lib: Option<String>,
    build_modules: Vec<&'a SoongModule>,
    test_modules: Vec<&'a SoongModule>,
}

fn is_aidl_package(p: &Package) -> bool {
    p.deps
        .iter()
        .any(|d| d.name == "rsbinder-aidl" && d.kind == "build")
}

/// The aidl_interface whose sources live in this package.
fn aidl_interface_for<'a>(soong: &'a Soong, p: &Package) -> Option<&'a SoongModule> {
    soong.aidl_interfaces().find(|a| {
        a.strings("srcs")
            .iter()
            .any(|s| a.path(s).starts_with(&p.dir))
    })
}

fn crate_modules<'a>(soong: &'a Soong, p: &Package, errors: &mut Vec<String>) -> CrateModules<'a> {
    let mut lib = None;
    let mut build_modules = Vec::new();
    if is_aidl_package(p) {
        match aidl_interface_for(soong, p) {
            None => errors.push(format!(
                "crate {}: no aidl_interface has sources under {}",
                p.name,
                rel(&p.dir)
            )),
            Some(a) => {
                lib = Some(aidl_current_rust_module(a));
                let lib_target = p
                    .targets
                    .iter()
                    .find(|t| t.kinds.iter().any(|k| k == "lib"));
                let aidl_crate = a.name.replace('.', "_");
                if let Some(t) = lib_target {
                    if t.name != aidl_crate {
                        errors.push(format!(
                            "aidl_interface {}: its Rust crate is {aidl_crate}, but cargo's lib \
                             name of {} is {}",
                            a.name, p.name, t.name
                        ));
                    }
                }
                if a.map_path(&["backend", "rust", "enabled"]) != Some(&Value::Boolean(true)) {
                    errors.push(format!(
                        "aidl_interface {}: backend.rust.enabled must be true",
                        a.name
                    ));
                }
            }
        }
        return CrateModules {
            lib,
            build_modules,
            test_modules: Vec::new(),
        };
    }
    for t in &p.targets {
        let is_lib = t.kinds.iter().any(|k| k == "lib" || k == "rlib");
        let is_bin = t.kinds.iter().any(|k| k == "bin");
        if !is_lib && !is_bin {
            continue;
        }
        if CARGO_ONLY_TARGETS
            .iter()
            .any(|(pk, tn, _)| *pk == p.name && *tn == t.name)
        {
            continue;
        }
        let want_types: &[&str] = if is_lib {
            &["rust_library", "rust_library_host", "rust_library_rlib"]
        } else {
            &["rust_binary", "rust_binary_host"]
        };
        let found: Vec<&SoongModule> = soong
            .rust_modules()
            .filter(|m| want_types.contains(&m.typ.as_str()))
            .filter(|m| m.crate_root().as_deref() == Some(t.src.as_path()))
            .collect();
        match found.as_slice() {
            [] if is_bin && TOOL_BIN_PACKAGES.contains(&p.name.as_str()) => eprintln!(
                "note: crate {}: bin `{}` has no Soong module (developer tool; add one or list it \
                 in CARGO_ONLY_TARGETS)",
                p.name, t.name
            ),
            [] => errors.push(format!(
                "crate {}: {} target `{}` ({}) has no {} module in Android.bp",
                p.name,
                if is_lib { "lib" } else { "bin" },
                t.name,
                rel(&t.src),
                want_types.join("/")
            )),
            [m, ..] => {
                let want_crate = crate_ident(&t.name);
                if m.string("crate_name") != Some(want_crate.as_str()) {
                    errors.push(format!(
                        "module {}: crate_name {:?}, cargo's {} target is {want_crate:?}",
                        m.name,
                        m.string("crate_name"),
                        p.name
                    ));
                }
                if is_lib {
                    lib = Some(m.name.clone());
                }
                build_modules.extend(found.iter().copied());
            }
        }
    }
    let test_modules = soong
        .rust_modules()
        .filter(|m| m.is_test())
        .filter(|m| m.crate_root().is_some_and(|r| r.starts_with(&p.dir)))
        .collect();
    CrateModules {
        lib,
        build_modules,
        test_modules,
    }
}

fn lib_module_of(soong: &Soong, packages: &[Package], path: &Path) -> Option<String> {
    let p = packages.iter().find(|p| p.dir == path)?;
    crate_modules(soong, p, &mut Vec::new()).lib
}

// ------------------------------------------------------------------------------------------------
// Tests

#[test]
fn android_bp_parses_and_names_are_unique() {
    let soong = Soong::load();
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for m in &soong.modules {
        if m.typ == "package" {
            continue;
        }
        if m.name.is_empty() {
            errors.push(format!("{}: a {} module without a name", m.bp, m.typ));
        } else if !seen.insert(m.name.clone()) {
            errors.push(format!("module {}: defined twice", m.name));
        }
    }
    fail_if(errors, "Android.bp module names");
}

#[test]
fn every_workspace_crate_has_its_module() {
    let soong = Soong::load();
    let packages = cargo_packages();
    assert!(packages.len() >= 5, "cargo metadata found too few packages");
    let mut errors = Vec::new();
    let mut untested = Vec::new();
    for p in &packages {
        let cm = crate_modules(&soong, p, &mut errors);
        if cm.lib.is_none() && cm.build_modules.is_empty() {
            errors.push(format!("crate {}: no Soong module at all", p.name));
        }
        if let Some(lib) = &cm.lib {
            if !soong.defined_rust_names().contains(lib) {
                errors.push(format!("crate {}: lib module {lib} is not defined", p.name));
            }
        }
        // Cargo test targets without a Soong test module: reported, not failed (new test files
        // appear all the time; Soong gets a module when the test can run under tradefed).
        for t in p
            .targets
            .iter()
            .filter(|t| t.kinds.iter().any(|k| k == "test"))
        {
            let excused = CARGO_ONLY_TESTS
                .iter()
                .any(|(pk, tn, _)| *pk == p.name && (*tn == "*" || *tn == t.name));
            if !excused
                && !cm
                    .test_modules
                    .iter()
                    .any(|m| m.crate_root().as_deref() == Some(t.src.as_path()))
            {
                untested.push(format!("{}:{}", p.name, t.name));
            }
        }
    }
    if !untested.is_empty() {
        eprintln!(
            "note: cargo test targets with no Soong test module (cargo-only): {}",
            untested.join(" ")
        );
    }
    fail_if(errors, "workspace crates vs Android.bp");
}

#[test]
fn every_dependency_maps_to_its_aosp_module() {
    let soong = Soong::load();
    let packages = cargo_packages();
    let table: HashMap<&str, Aosp> = DEP_TABLE.iter().map(|(n, a, _)| (*n, *a)).collect();
    let defined = soong.defined_rust_names();
    let mut errors = Vec::new();

    for p in &packages {
        let cm = crate_modules(&soong, p, &mut errors);
        // Expected module per dependency (None = cargo-only).
        let mut expected_normal: BTreeSet<String> = BTreeSet::new();
        let mut expected_any: BTreeSet<String> = BTreeSet::new();
        let mut scopes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in &cm.build_modules {
            for (scope, libs) in m.rustlibs() {
                scopes.entry(scope).or_default().extend(libs);
            }
        }
        let union: BTreeSet<String> = scopes.values().flatten().cloned().collect();
        let in_scope = |scope: &str, lib: &str| scopes.get(scope).is_some_and(|s| s.contains(lib));
        let owner = || {
            cm.build_modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join("/")
        };

        for d in &p.deps {
            // Workspace path dependency → that crate's lib module.
            if let Some(path) = &d.path {
                match lib_module_of(&soong, &packages, path) {
                    Some(lib) => {
                        expected_any.insert(lib.clone());
                        if d.kind == "normal" {
                            expected_normal.insert(lib.clone());
                            if !cm.build_modules.is_empty() && !union.contains(&lib) {
                                errors.push(format!(
                                    "module {}: crate {} depends on {} but rustlibs lack {lib}",
                                    owner(),
                                    p.name,
                                    d.name
                                ));
                            }
                        }
                    }
                    None => errors.push(format!(
                        "crate {}: path dependency {} has no lib module",
                        p.name, d.name
                    )),
                }
                continue;
            }
            let Some(aosp) = table.get(d.name.as_str()) else {
                errors.push(format!(
                    "crate {}: dependency `{}` has no entry in DEP_TABLE (cargo name → AOSP module)",
                    p.name, d.name
                ));
                continue;
            };
            if d.kind == "build" && !matches!(aosp, Aosp::CargoOnly(_)) {
                errors.push(format!(
                    "crate {}: build-dependency `{}` must be cargo-only (Soong runs no build.rs)",
                    p.name, d.name
                ));
            }
            let module = match aosp {
                Aosp::Module(m) | Aosp::HostOnly(m) | Aosp::DeviceOnly(m) => *m,
                Aosp::CargoOnly(_) => continue,
            };
            expected_any.insert(module.to_string());
            if d.kind != "normal" || cm.build_modules.is_empty() {
                continue;
            }
            expected_normal.insert(module.to_string());
            let android_only = d
                .target
                .as_deref()
                .is_some_and(|t| t.replace(' ', "") == "cfg(target_os=\"android\")");
            match aosp {
                Aosp::Module(m) if android_only => {
                    if !in_scope("android", m) {
                        errors.push(format!(
                            "module {}: `{}` is an android-only dependency of {}; put {m} under \
                             target.android.rustlibs",
                            owner(),
                            d.name,
                            p.name
                        ));
                    }
                }
                Aosp::Module(m) => {
                    if !union.contains(*m) {
                        errors.push(format!(
                            "module {}: crate {} depends on `{}`; rustlibs must contain {m}",
                            owner(),
                            p.name,
                            d.name
                        ));
                    }
                }
                Aosp::HostOnly(m) => {
                    if !in_scope("host", m) {
                        errors.push(format!(
                            "module {}: crate {} depends on `{}`; {m} belongs under \
                             target.host.rustlibs",
                            owner(),
                            p.name,
                            d.name
                        ));
                    }
                }
                Aosp::DeviceOnly(m) => {
                    if !in_scope("android", m) {
                        errors.push(format!(
                            "module {}: crate {} depends on `{}`; {m} belongs under \
                             target.android.rustlibs",
                            owner(),
                            p.name,
                            d.name
                        ));
                    }
                }
                Aosp::CargoOnly(_) => {}
            }
        }

        // Reverse: nothing linked that the crate does not depend on.
        let soong_only: BTreeSet<&str> = SOONG_ONLY
            .iter()
            .filter(|(pk, _, _)| *pk == p.name)
            .map(|(_, m, _)| *m)
            .collect();
        let own_lib = cm.lib.clone().unwrap_or_default();
        for m in &cm.build_modules {
            for lib in m.all_rustlibs() {
                let ok = expected_normal.contains(&lib)
                    || soong_only.contains(lib.as_str())
                    || lib == own_lib
                    || (defined.contains(&lib) && generated_for(&soong, &lib, p));
                if !ok {
                    errors.push(format!(
                        "module {}: links {lib}, which no dependency of crate {} maps to",
                        m.name, p.name
                    ));
                }
            }
        }
        for m in &cm.test_modules {
            for lib in m.all_rustlibs() {
                let ok = expected_any.contains(&lib)
                    || soong_only.contains(lib.as_str())
                    || lib == own_lib
                    || (defined.contains(&lib) && generated_for(&soong, &lib, p));
                if !ok {
                    errors.push(format!(
                        "module {}: links {lib}, which no (dev-)dependency of crate {} maps to",
                        m.name, p.name
                    ));
                }
            }
        }
    }

    // Placement rules for every module, whatever crate it belongs to.
    for m in soong.rust_modules() {
        let libs = m.rustlibs();
        for (name, aosp, _) in DEP_TABLE {
            match aosp {
                Aosp::DeviceOnly(lib) => {
                    for (scope, set) in &libs {
                        if scope != "android" && set.contains(*lib) {
                            errors.push(format!(
                                "module {}: {lib} ({name}) is device-only but listed in {scope} \
                                 rustlibs",
                                m.name
                            ));
                        }
                    }
                }
                Aosp::HostOnly(lib) => {
                    for (scope, set) in &libs {
                        if scope != "host" && set.contains(*lib) {
                            errors.push(format!(
                                "module {}: {lib} ({name}) is host-only here but listed in {scope} \
                                 rustlibs",
                                m.name
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    fail_if(errors, "cargo dependencies vs AOSP modules");
}

/// `lib` is a module generated from this package's own sources (rust_protobuf of its protos, or its
/// own sibling library), so linking it needs no cargo dependency.
fn generated_for(soong: &Soong, lib: &str, p: &Package) -> bool {
    let Some(m) = soong.get(lib) else {
        return false;
    };
    if m.typ.starts_with("rust_protobuf") {
        return proto_files_of(soong, m)
            .iter()
            .all(|f| f.starts_with(&p.dir));
    }
    false
}

#[test]
fn cargo_only_crates_do_not_appear_in_android_bp() {
    let soong = Soong::load();
    let mut errors = Vec::new();
    fn walk(v: &Value, hits: &mut Vec<String>) {
        match v {
            Value::String(s) | Value::Ident(s) if FORBIDDEN_IN_BP.iter().any(|f| s.contains(f)) => {
                hits.push(s.clone());
            }
            Value::Array(a) | Value::ConcatExpr(a) => a.iter().for_each(|x| walk(x, hits)),
            Value::Map(m) => m.0.values().for_each(|x| walk(x, hits)),
            _ => {}
        }
    }
    for m in &soong.modules {
        let mut hits = Vec::new();
        for v in m.props.values() {
            walk(v, &mut hits);
        }
        for lib in m.all_rustlibs() {
            for (n, a, _) in DEP_TABLE {
                if let Aosp::CargoOnly(instead) = a {
                    if lib == format!("lib{}", crate_ident(n)) {
                        hits.push(format!("{lib} (in Soong: {instead})"));
                    }
                }
            }
        }
        // Cargo features that select cargo-only backends must stay off.
        for f in m.strings("features") {
            if f == "rsbinder" {
                hits.push(format!("features: {f}"));
            }
        }
        hits.sort();
        hits.dedup();
        for h in hits {
            errors.push(format!("module {}: cargo-only piece {h:?}", m.name));
        }
    }
    fail_if(errors, "cargo-only crates in Android.bp");
}

#[test]
fn cfg_soong_is_set_where_the_sources_expect_it() {
    let soong = Soong::load();
    let mut errors = Vec::new();
    for m in soong.rust_modules() {
        let Some(root_file) = m.crate_root() else {
            continue;
        };
        let src_dir = root_file.parent().unwrap();
        // Only the crate's own tree (src/), not a whole package for tests/*.rs roots.
        if !src_dir.ends_with("src") {
            continue;
        }
        if tree_mentions(src_dir, "cfg(soong)") && !m.strings("cfgs").iter().any(|c| c == "soong") {
            errors.push(format!(
                "module {}: sources under {} use cfg(soong) (binder shim) but cfgs lacks \"soong\"",
                m.name,
                rel(src_dir)
            ));
        }
    }
    // The one crate whose shim we rely on.
    let ipc = soong
        .get("libvsock_plugin_ipc")
        .expect("module libvsock_plugin_ipc");
    if !ipc.strings("cfgs").iter().any(|c| c == "soong") {
        errors.push("module libvsock_plugin_ipc: cfgs must contain \"soong\"".into());
    }
    if !ipc.all_rustlibs().contains("libbinder_rs") {
        errors.push("module libvsock_plugin_ipc: must link libbinder_rs".into());
    }
    let shim = std::fs::read_to_string(root().join("ipc/src/platform/mod.rs")).unwrap();
    if !shim.contains("#[cfg(soong)]") {
        errors
            .push("ipc/src/platform/mod.rs no longer selects a backend with #[cfg(soong)]".into());
    }
    fail_if(errors, "cfg(soong)");
}

fn tree_mentions(dir: &Path, needle: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            tree_mentions(&p, needle)
        } else {
            p.extension().is_some_and(|x| x == "rs")
                && std::fs::read_to_string(&p).is_ok_and(|s| s.contains(needle))
        }
    })
}

// Paths ------------------------------------------------------------------------------------------

/// Minimal Blueprint glob: `*` within one path component, `**` for any depth.
fn glob(base: &Path, pattern: &str) -> Vec<PathBuf> {
    fn matches(pat: &str, s: &str) -> bool {
        match pat.find('*') {
            None => pat == s,
            Some(i) => {
                let (pre, rest) = (&pat[..i], &pat[i + 1..]);
                if !s.starts_with(pre) {
                    return false;
                }
                let s = &s[pre.len()..];
                (0..=s.len()).any(|k| matches(rest, &s[k..]))
            }
        }
    }
    fn go(dir: &Path, comps: &[&str], out: &mut Vec<PathBuf>) {
        let Some((first, rest)) = comps.split_first() else {
            return;
        };
        if *first == "**" {
            go(dir, rest, out);
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        go(&e.path(), comps, out);
                    }
                }
            }
            return;
        }
        if !first.contains('*') {
            let p = dir.join(first);
            if rest.is_empty() {
                if p.exists() {
                    out.push(p);
                }
            } else {
                go(&p, rest, out);
            }
            return;
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if matches(first, &name) {
                    if rest.is_empty() {
                        out.push(e.path());
                    } else {
                        go(&e.path(), rest, out);
                    }
                }
            }
        }
    }
    let comps: Vec<&str> = pattern.split('/').collect();
    let mut out = Vec::new();
    go(base, &comps, &mut out);
    out.sort();
    out
}

/// Files a list property names, resolving `:filegroup` references.
fn resolve_files(
    soong: &Soong,
    m: &SoongModule,
    key: &str,
    errors: &mut Vec<String>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for s in m.strings(key) {
        if let Some(dep) = s.strip_prefix(':') {
            match soong.get(dep) {
                Some(fg) if fg.typ == "filegroup" => {
                    out.extend(resolve_files(soong, fg, "srcs", errors))
                }
                Some(other) if other.typ.starts_with("rust_") => {}
                Some(other) => errors.push(format!(
                    "module {}: {key} names :{dep}, a {} (expected a filegroup)",
                    m.name, other.typ
                )),
                None => errors.push(format!(
                    "module {}: {key} names :{dep}, which is not defined",
                    m.name
                )),
            }
            continue;
        }
        let found = glob(&m.dir, &s);
        if found.is_empty() {
            errors.push(format!(
                "module {}: {key} entry {s:?} matches no file (relative to {})",
                m.name, m.bp
            ));
        }
        out.extend(found);
    }
    out
}

fn proto_files_of(soong: &Soong, m: &SoongModule) -> Vec<PathBuf> {
    resolve_files(soong, m, "protos", &mut Vec::new())
}

#[test]
fn paths_named_in_android_bp_exist() {
    let soong = Soong::load();
    let mut errors = Vec::new();
    for m in &soong.modules {
        for key in ["srcs", "protos", "data"] {
            resolve_files(&soong, m, key, &mut errors);
        }
        if let Some(root_file) = m.crate_root() {
            if !root_file.is_file() {
                errors.push(format!(
                    "module {}: crate_root {} does not exist",
                    m.name,
                    rel(&root_file)
                ));
            }
        } else if m.is_rust()
            && !m.typ.ends_with("_defaults")
            && !m.typ.starts_with("rust_protobuf")
            && m.strings("srcs").is_empty()
        {
            errors.push(format!("module {}: neither crate_root nor srcs", m.name));
        }
        if let Some(d) = m.string("local_include_dir") {
            if !m.path(d).is_dir() {
                errors.push(format!(
                    "module {}: local_include_dir {d:?} is not a directory",
                    m.name
                ));
            }
        }
        if m.typ == "filegroup" {
            if let Some(base) = m.string("path") {
                for s in m.strings("srcs") {
                    if !Path::new(&s).starts_with(base) {
                        errors.push(format!(
                            "module {}: src {s:?} is not under path {base:?}",
                            m.name
                        ));
                    }
                }
            }
        }
        for key in ["data_bins", "data_libs", "required"] {
            for dep in m.strings(key) {
                if soong.get(&dep).is_none() {
                    errors.push(format!(
                        "module {}: {key} names {dep}, which is not defined here",
                        m.name
                    ));
                }
            }
        }
    }
    fail_if(errors, "paths in Android.bp");
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    files(dir, &|p| p.extension().is_some_and(|x| x == ext))
}

#[test]
fn every_proto_file_has_a_rust_protobuf_module() {
    let soong = Soong::load();
    let mut errors = Vec::new();
    let covered: BTreeSet<PathBuf> = soong
        .modules
        .iter()
        .filter(|m| m.typ.starts_with("rust_protobuf"))
        .flat_map(|m| resolve_files(&soong, m, "protos", &mut errors))
        .collect();
    for f in files_with_ext(&root().join("proto/protos"), "proto") {
        if !covered.contains(&f) {
            errors.push(format!(
                "{}: in no rust_protobuf module's protos (proto/build.rs compiles it)",
                rel(&f)
            ));
        }
    }
    // Soong names one module per file stem: stems must be unique within a module.
    for m in soong
        .modules
        .iter()
        .filter(|m| m.typ.starts_with("rust_protobuf"))
    {
        let files = resolve_files(&soong, m, "protos", &mut Vec::new());
        let stems: BTreeSet<_> = files
            .iter()
            .map(|f| f.file_stem().unwrap().to_owned())
            .collect();
        if stems.len() != files.len() {
            errors.push(format!("module {}: two protos share a file stem", m.name));
        }
        if m.string("crate_name").is_none() || m.string("source_stem").is_none() {
            errors.push(format!(
                "module {}: needs crate_name and source_stem",
                m.name
            ));
        }
    }
    fail_if(errors, "protos");
}

/// `VERSION` in ipc/aidl/build.rs (what the cargo build stamps into the stubs).
fn cargo_aidl_version() -> u32 {
    let src = std::fs::read_to_string(root().join("ipc/aidl/build.rs")).unwrap();
    src.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("const VERSION: i32 =")
                .map(|v| v.trim().trim_end_matches(';').trim().parse().unwrap())
        })
        .expect("const VERSION in ipc/aidl/build.rs")
}

#[test]
fn aidl_interface_matches_the_frozen_api() {
    let soong = Soong::load();
    let mut errors = Vec::new();
    let aidls: Vec<&SoongModule> = soong.aidl_interfaces().collect();
    assert_eq!(
        aidls.len(),
        1,
        "expected one aidl_interface (android.vsockplugin)"
    );
    let a = aidls[0];
    let include = a.path(a.string("local_include_dir").unwrap_or("."));
    // Every .aidl under the include dir is in srcs, and the package path matches.
    let srcs: BTreeSet<PathBuf> = resolve_files(&soong, a, "srcs", &mut errors)
        .into_iter()
        .collect();
    let pkg_dir = include.join(a.name.replace('.', "/"));
    for f in files_with_ext(&pkg_dir, "aidl") {
        if !srcs.contains(&f) {
            errors.push(format!(
                "aidl_interface {}: {} not in srcs",
                a.name,
                rel(&f)
            ));
        }
    }
    if srcs.is_empty() {
        errors.push(format!("aidl_interface {}: no sources", a.name));
    }
    // Versions: the frozen dumps the cargo side keeps (ipc/aidl/aidl_api/<name>/<N>).
    let api_dir = root().join("ipc/aidl/aidl_api").join(&a.name);
    let mut dumps: Vec<u32> = std::fs::read_dir(&api_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    dumps.sort();
    let mut versions = aidl_versions(a);
    versions.sort();
    if versions != dumps {
        errors.push(format!(
            "aidl_interface {}: versions {versions:?} but frozen dumps in {} are {dumps:?}",
            a.name,
            rel(&api_dir)
        ));
    }
    for v in &dumps {
        if !api_dir.join(v.to_string()).join(".hash").is_file() {
            errors.push(format!(
                "aidl_interface {}: frozen version {v} lacks .hash",
                a.name
            ));
        }
    }
    // frozen: true ⇔ the sources are the latest dump (cargo VERSION == latest frozen).
    let cargo_version = cargo_aidl_version();
    let latest = dumps.last().copied().unwrap_or(0);
    let want_frozen = cargo_version == latest;
    if a.bool("frozen") != Some(want_frozen) {
        errors.push(format!(
            "aidl_interface {}: frozen must be {want_frozen} (ipc/aidl/build.rs VERSION = \
             {cargo_version}, latest frozen dump = {latest})",
            a.name
        ));
    }
    // Dependents link the version the cargo build generates.
    let want = format!("{}-V{cargo_version}-rust", a.name);
    for m in soong.rust_modules() {
        for lib in m.all_rustlibs() {
            if lib.starts_with(&format!("{}-", a.name)) && lib != want {
                errors.push(format!(
                    "module {}: links {lib}, but the cargo side builds version {cargo_version} \
                     ({want})",
                    m.name
                ));
            }
        }
    }
    if !soong
        .rust_modules()
        .any(|m| m.all_rustlibs().contains(&want))
    {
        errors.push(format!("no module links {want}"));
    }
    fail_if(errors, "aidl_interface");
}

// TEST_MAPPING -----------------------------------------------------------------------------------

/// TEST_MAPPING is JSON with `//` comments (outside strings).
fn strip_json_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if c == '/' && chars.peek() == Some(&'/') {
            for n in chars.by_ref() {
                if n == '\n' {
                    out.push('\n');
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn test_mapping_names_test_modules_of_android_bp() {
    let soong = Soong::load();
    let text =
        std::fs::read_to_string(root().join("TEST_MAPPING")).expect("top-level TEST_MAPPING");
    let json: serde_json::Value = serde_json::from_str(&strip_json_comments(&text))
        .unwrap_or_else(|e| panic!("TEST_MAPPING is not JSON (with // comments): {e}"));
    let obj = json.as_object().expect("TEST_MAPPING: an object");
    let mut errors = Vec::new();
    let mut named = 0;
    for (group, entries) in obj {
        if group == "imports" {
            for i in entries.as_array().into_iter().flatten() {
                if i["path"].as_str().is_none_or(str::is_empty) {
                    errors.push(format!("TEST_MAPPING imports: entry without path: {i}"));
                }
            }
            continue;
        }
        let Some(entries) = entries.as_array() else {
            errors.push(format!("TEST_MAPPING group {group}: not a list"));
            continue;
        };
        for e in entries {
            let Some(name) = e["name"].as_str() else {
                errors.push(format!(
                    "TEST_MAPPING group {group}: entry without name: {e}"
                ));
                continue;
            };
            named += 1;
            let Some(m) = soong.get(name) else {
                errors.push(format!(
                    "TEST_MAPPING {group}: test module {name} is not defined in Android.bp"
                ));
                continue;
            };
            if !m.is_test() {
                errors.push(format!(
                    "TEST_MAPPING {group}: module {name} is a {}, not a test",
                    m.typ
                ));
            }
            if !m
                .strings("test_suites")
                .iter()
                .any(|s| s == "general-tests")
            {
                errors.push(format!(
                    "module {name}: test_suites must contain general-tests"
                ));
            }
            if e["host"].as_bool() == Some(true) && !m.is_host_capable() {
                errors.push(format!(
                    "TEST_MAPPING {group}: {name} is marked host but module {name} has no host variant"
                ));
            }
        }
    }
    if named == 0 {
        errors.push("TEST_MAPPING names no test".into());
    }
    // Every Soong test module is a general-tests module with a generated config.
    for m in soong.rust_modules().filter(|m| m.is_test()) {
        if !m
            .strings("test_suites")
            .iter()
            .any(|s| s == "general-tests")
        {
            errors.push(format!(
                "module {}: test_suites must contain general-tests",
                m.name
            ));
        }
    }
    fail_if(errors, "TEST_MAPPING");
}

// Soong readiness that needs changes outside Android.bp (see cuttlefish/README.md, "Soong: known
// gaps"). Ignored until the owners of those files land them; run with `--ignored` to see the state.

#[test]
fn proto_crate_builds_without_cargo_out_dir() {
    let src = std::fs::read_to_string(root().join("proto/src/lib.rs")).unwrap();
    if src.contains("env!(\"OUT_DIR\")") {
        assert!(
            src.contains("cfg(soong)") && src.contains("vsock_plugin_proto_messages"),
            "module libvsock_plugin_proto: proto/src/lib.rs includes $OUT_DIR/protos/mod.rs, which \
             Soong does not produce; add `#[cfg(soong)] pub use vsock_plugin_proto_messages::*;` and \
             put the include! under #[cfg(not(soong))]"
        );
    }
}

#[test]
fn aidl_api_layout_is_what_soong_reads() {
    let soong = Soong::load();
    let mut errors = Vec::new();
    for a in soong.aidl_interfaces() {
        let api = a.dir.join("aidl_api").join(&a.name);
        for v in aidl_versions(a) {
            let d = api.join(v.to_string());
            if !d.is_dir() {
                errors.push(format!(
                    "aidl_interface {} ({}): Soong looks for version {v} in {}, which is missing",
                    a.name,
                    a.bp,
                    rel(&d)
                ));
                continue;
            }
            // AOSP: sha1 over `sha1sum` of the sorted dump files plus the previous version
            // ("latest-version" for 1), see system/tools/aidl/build/aidl_api.go.
            let prev = if v > 1 {
                (v - 1).to_string()
            } else {
                "latest-version".into()
            };
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "cd '{}' && {{ find ./ -name '*.aidl' -print0 | LC_ALL=C sort -z | xargs -0 \
                     sha1sum && echo {prev}; }} | sha1sum | cut -d ' ' -f 1",
                    d.display()
                ))
                .output()
                .unwrap();
            let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let have = std::fs::read_to_string(d.join(".hash")).unwrap_or_default();
            if have.lines().last().map(str::trim) != Some(want.as_str()) {
                errors.push(format!(
                    "aidl_interface {}: {}/.hash is not AOSP's sha1 ({want})",
                    a.name,
                    rel(&d)
                ));
            }
        }
        if !api.join("current").is_dir() {
            errors.push(format!(
                "aidl_interface {}: {}/current missing (`m {}-update-api` creates it)",
                a.name,
                rel(&api),
                a.name
            ));
        }
    }
    fail_if(errors, "aidl_api layout for Soong");
}

#[test]
fn dep_table_has_no_duplicates() {
    let mut seen = BTreeSet::new();
    for (n, a, sure) in DEP_TABLE {
        assert!(seen.insert(*n), "DEP_TABLE: {n} twice");
        let module = match a {
            Aosp::Module(m) | Aosp::HostOnly(m) | Aosp::DeviceOnly(m) => m.to_string(),
            Aosp::CargoOnly(why) => format!("(cargo only: {why})"),
        };
        let sure = match sure {
            Sure::Seen => "seen".to_string(),
            Sure::Assumed => "assumed".to_string(),
            Sure::SeenRestricted(why) => format!("seen, restricted: {why}"),
        };
        eprintln!("{n:24} {module:40} {sure}");
    }
}

/// Properties each module type may use here (Soong rejects unknown ones: "unrecognized property").
/// Taken from AOSP modules of the same types (reference note §6); a typo fails here first.
const KNOWN_PROPERTIES: &[(&str, &[&str])] = &[
    (
        "package",
        &["default_applicable_licenses", "default_visibility"],
    ),
    (
        "license",
        &["name", "visibility", "license_kinds", "license_text"],
    ),
    ("filegroup", &["name", "srcs", "path", "visibility"]),
    (
        "rust_protobuf",
        &[
            "name",
            "crate_name",
            "source_stem",
            "protos",
            "grpc_protos",
            "proto_flags",
            "host_supported",
            "apex_available",
            "min_sdk_version",
            "visibility",
        ],
    ),
    (
        "aidl_interface",
        &[
            "name",
            "srcs",
            "local_include_dir",
            "include_dirs",
            "imports",
            "stability",
            "unstable",
            "versions",
            "versions_with_info",
            "frozen",
            "host_supported",
            "vendor_available",
            "backend",
            "owner",
            "flags",
            "visibility",
        ],
    ),
    (
        "rust",
        &[
            "name",
            "defaults",
            "crate_name",
            "crate_root",
            "srcs",
            "edition",
            "rustlibs",
            "rlibs",
            "proc_macros",
            "shared_libs",
            "static_libs",
            "features",
            "cfgs",
            "flags",
            "lints",
            "clippy_lints",
            "prefer_rlib",
            "host_supported",
            "device_supported",
            "compile_multilib",
            "enabled",
            "target",
            "arch",
            "multilib",
            "apex_available",
            "min_sdk_version",
            "vendor_available",
            "product_available",
            "visibility",
            "stem",
            "cargo_env_compat",
            "cargo_pkg_version",
            "test_suites",
            "test_options",
            "test_config",
            "auto_gen_config",
            "require_root",
            "data",
            "data_bins",
            "data_libs",
            "required",
        ],
    ),
];

#[test]
fn android_bp_uses_only_known_properties() {
    let mut errors = Vec::new();
    for f in bp_files() {
        let bp = BluePrint::from_file(&f).unwrap();
        for m in &bp.modules {
            let key = if m.typ.starts_with("rust_") && !m.typ.starts_with("rust_protobuf") {
                "rust"
            } else {
                m.typ.as_str()
            };
            let Some((_, known)) = KNOWN_PROPERTIES.iter().find(|(t, _)| *t == key) else {
                errors.push(format!(
                    "{}: module type {} is not one this project uses (add it to KNOWN_PROPERTIES \
                     after checking Soong)",
                    rel(&f),
                    m.typ
                ));
                continue;
            };
            let name = m.get_string("name").cloned().unwrap_or_default();
            for p in m.entries.keys() {
                if !known.contains(&p.as_str()) {
                    errors.push(format!("module {name} ({}): unknown property {p:?}", m.typ));
                }
            }
        }
    }
    fail_if(errors, "Android.bp properties");
}

fn locked_versions() -> BTreeMap<String, BTreeSet<String>> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            out.entry(n)
                .or_default()
                .insert(v.trim_matches('"').to_string());
        }
    }
    out
}

/// Cargo.lock pins what AOSP compiles (or the table says why not), so the cargo build tests the
/// code Soong will build.
#[test]
fn cargo_lock_pins_what_aosp_builds() {
    let locked = locked_versions();
    let mut errors = Vec::new();
    for c in AOSP_CRATES {
        let ours = locked.get(c.name).cloned().unwrap_or_default();
        let same = ours.len() == 1 && ours.contains(c.version);
        match (same, c.differs) {
            (true, None) | (false, Some(_)) if !ours.is_empty() => {}
            (true, Some(_)) => errors.push(format!(
                "crate {}: Cargo.lock has AOSP's {}; drop the `differs` note in AOSP_CRATES",
                c.name, c.version
            )),
            _ => errors.push(format!(
                "crate {}: Cargo.lock has {:?}, AOSP builds {}: pin that version (Soong compiles \
                 our sources against it) or record in AOSP_CRATES why the difference is safe",
                c.name, ours, c.version
            )),
        }
    }
    fail_if(errors, "Cargo.lock vs AOSP crate versions");
}

/// Every feature our crates ask of an AOSP-built dependency is one AOSP builds it with, both the
/// features of the dependency declarations and those our own cargo features enable when
/// Android.bp turns them on (`features:` of the crate's module). Turning on the plugin's `iotlb`
/// in Android.bp fails here until AOSP's vm-memory has `iommu`.
#[test]
fn features_used_in_soong_are_built_by_aosp() {
    let soong = Soong::load();
    let packages = cargo_packages();
    let aosp = |name: &str| AOSP_CRATES.iter().find(|c| c.name == name);
    let mut errors = Vec::new();
    for p in &packages {
        for d in p.deps.iter().filter(|d| d.kind != "dev") {
            let Some(c) = aosp(&d.name) else { continue };
            for f in d
                .features
                .iter()
                .filter(|f| !c.features.contains(&f.as_str()))
            {
                errors.push(format!(
                    "crate {}: dependency {} asks for feature `{f}`, which AOSP does not build \
                     (AOSP_CRATES); make it optional behind a cargo feature Android.bp leaves off",
                    p.name, d.name
                ));
            }
        }
        let mut errs = Vec::new();
        let cm = crate_modules(&soong, p, &mut errs);
        let Some(lib) = cm.lib.as_ref().and_then(|l| soong.get(l)) else {
            continue;
        };
        for feature in lib.strings("features") {
            let Some(enables) = p.features.get(&feature) else {
                errors.push(format!(
                    "module {}: feature `{feature}` is not a cargo feature of {}",
                    lib.name, p.name
                ));
                continue;
            };
            for e in enables {
                let Some((dep, f)) = e.split_once('/') else {
                    continue;
                };
                if let Some(c) = aosp(dep) {
                    if !c.features.contains(&f) {
                        errors.push(format!(
                            "module {}: feature `{feature}` needs {dep} feature `{f}`, which \
                             AOSP's module does not build",
                            lib.name
                        ));
                    }
                }
            }
        }
    }
    fail_if(errors, "features in Soong vs AOSP's crates");
}

/// The IOTLB integration tests run exactly where the plugin is built with translation: Soong
/// builds it without (`iotlb` off), so no Soong test module (and no TEST_MAPPING entry) may run
/// `tests/tests/iotlb.rs` until Android.bp turns the feature on.
#[test]
fn iotlb_tests_follow_the_soong_plugin_features() {
    let soong = Soong::load();
    let plugin = soong
        .get("libvsock_plugin")
        .expect("module libvsock_plugin");
    let translating = plugin.strings("features").iter().any(|f| f == "iotlb");
    let iotlb_tests: Vec<&str> = soong
        .rust_modules()
        .filter(|m| m.is_test())
        .filter(|m| {
            m.crate_root()
                .is_some_and(|r| r.ends_with("tests/tests/iotlb.rs"))
        })
        .map(|m| m.name.as_str())
        .collect();
    match (translating, iotlb_tests.is_empty()) {
        (false, false) => panic!(
            "Android.bp builds libvsock_plugin without `iotlb` but {iotlb_tests:?} runs the IOTLB \
             tests: they would fail (iotlb=required is refused by such a build)"
        ),
        (true, true) => panic!(
            "Android.bp builds libvsock_plugin with `iotlb`: add a test module for \
             tests/tests/iotlb.rs (and remove it from CARGO_ONLY_TESTS)"
        ),
        _ => {}
    }
}

/// Rust files a module compiles, near enough: everything under its crate root's directory, or for
/// an integration test (`tests/tests/X.rs`) the file and the shared `tests/tests/common/`.
fn module_sources(m: &SoongModule) -> Vec<PathBuf> {
    let Some(root_file) = m.crate_root() else {
        return Vec::new();
    };
    let dir = root_file.parent().unwrap_or(Path::new(".")).to_path_buf();
    if dir.ends_with("tests/tests") {
        let mut files = vec![root_file];
        files.extend(files_with_ext(&dir.join("common"), "rs"));
        files
    } else {
        files_with_ext(&dir, "rs")
    }
}

/// `env!("NAME")` uses (not `option_env!`) of CARGO_* variables in `src`.
fn cargo_env_uses(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find("env!(\"CARGO_") {
        let optional = rest[..i].ends_with("option_");
        let tail = &rest[i + 6..];
        let name: String = tail.chars().take_while(|c| *c != '"').collect();
        if !optional {
            out.insert(name);
        }
        rest = tail;
    }
    out
}

/// Soong sets only CARGO_CRATE_NAME, CARGO_PKG_NAME, CARGO_BIN_NAME (binaries), and with
/// `cargo_pkg_version` CARGO_PKG_VERSION(_MAJOR/_MINOR/_PATCH), all only under
/// `cargo_env_compat: true` (build/soong rust/builder.go, `rustEnvVars`); a compile-time
/// `env!` of anything else (CARGO_MANIFEST_DIR…) breaks the Soong build.
#[test]
fn cargo_env_vars_are_ones_soong_sets() {
    let soong = Soong::load();
    let packages = cargo_packages();
    let mut errors = Vec::new();
    for m in soong.rust_modules() {
        let mut used = BTreeSet::new();
        for f in module_sources(m) {
            used.extend(cargo_env_uses(
                &std::fs::read_to_string(&f).unwrap_or_default(),
            ));
        }
        if used.is_empty() {
            continue;
        }
        let compat = m.bool("cargo_env_compat") == Some(true);
        let version = m.string("cargo_pkg_version");
        let package = m.crate_root().and_then(|r| {
            packages
                .iter()
                .filter(|p| r.starts_with(&p.dir))
                .max_by_key(|p| p.dir.components().count())
        });
        for v in &used {
            let set = match v.as_str() {
                "CARGO_CRATE_NAME" | "CARGO_PKG_NAME" => compat,
                "CARGO_BIN_NAME" => compat && m.typ.starts_with("rust_binary"),
                "CARGO_PKG_VERSION"
                | "CARGO_PKG_VERSION_MAJOR"
                | "CARGO_PKG_VERSION_MINOR"
                | "CARGO_PKG_VERSION_PATCH" => compat && version.is_some(),
                _ => false,
            };
            if !set {
                errors.push(format!(
                    "module {}: its sources use env!(\"{v}\"), which Soong does not set for it \
                     (needs cargo_env_compat: true{}; CARGO_MANIFEST_DIR and others are never set: \
                     use option_env!)",
                    m.name,
                    if v.starts_with("CARGO_PKG_VERSION") {
                        " and cargo_pkg_version"
                    } else {
                        ""
                    }
                ));
            }
        }
        if let (Some(v), Some(p)) = (version, package) {
            if v != p.version {
                errors.push(format!(
                    "module {}: cargo_pkg_version {v} but cargo package {} is {}",
                    m.name, p.name, p.version
                ));
            }
        }
    }
    fail_if(errors, "CARGO_* variables under Soong");
}

/// Every module of ours compiles with the lint set Cargo.toml's `[workspace.lints]` emulates
/// (`lints: "vendor"`: rustc -A deprecated -D warnings, clippy off; build/soong
/// rust/config/lints.go), explicit so that the tree's location in AOSP does not choose it.
#[test]
fn every_module_uses_the_lint_set_cargo_emulates() {
    let soong = Soong::load();
    let cargo_toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for needle in [
        "[workspace.lints.rust]",
        "warnings = \"deny\"",
        "deprecated = \"allow\"",
    ] {
        assert!(
            cargo_toml.contains(needle),
            "Cargo.toml: {needle} missing: cargo no longer builds with Soong's vendor lints"
        );
    }
    let mut errors = Vec::new();
    for p in cargo_packages().iter().filter(|p| !is_aidl_package(p)) {
        let manifest = std::fs::read_to_string(p.dir.join("Cargo.toml")).unwrap();
        if !manifest.contains("[lints]\nworkspace = true") {
            errors.push(format!(
                "crate {}: Cargo.toml lacks [lints] workspace = true",
                p.name
            ));
        }
    }
    // rust_protobuf output is generated code: Soong lints it by its own rules.
    for m in soong.rust_modules().filter(|m| m.typ != "rust_protobuf") {
        for (key, want) in [("lints", "vendor"), ("clippy_lints", "vendor")] {
            if m.string(key) != Some(want) {
                errors.push(format!(
                    "module {}: {key} is {:?}, expected {want:?}",
                    m.name,
                    m.string(key)
                ));
            }
        }
    }
    fail_if(errors, "lint sets");
}
