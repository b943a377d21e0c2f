//! The proposed change to `wasi:nn` (`wit/proposal/`, RFC.md "A proposed
//! change to wasi:nn"): it parses as WIT tools parse it, its `ml` world is
//! still the spec's tensor API (every interface, type and function of
//! `wasi:nn@0.2.0-rc-2024-10-28` is there, in the same shape), and the
//! package file checked in beside it (`wit/proposal/wasi-nn.wasm`, what an
//! OCI registry holds for a WIT package) is exactly what the WIT encodes to.
//! And the RFC that proposes it quotes only figures its results files hold.

use std::collections::BTreeSet;
use std::path::PathBuf;

use wasi_nn_llm_tests::workspace_root;
use wit_parser::{FunctionKind, Interface, PackageId, Resolve, Type, TypeDefKind};

fn load(dir: &str) -> (Resolve, PackageId) {
    let mut resolve = Resolve::new();
    let (package, _) =
        resolve.push_dir(workspace_root().join(dir)).unwrap_or_else(|e| panic!("{dir} does not parse: {e:?}"));
    (resolve, package)
}

fn package_file() -> PathBuf {
    workspace_root().join("wit/proposal/wasi-nn.wasm")
}

#[test]
fn the_proposal_parses_into_its_profiles_and_its_package_file_is_current() {
    let (resolve, package) = load("wit/proposal");
    assert_eq!(resolve.packages[package].name.to_string(), "wasi:nn@0.3.0-draft");
    let worlds: BTreeSet<&str> = resolve.packages[package].worlds.keys().map(String::as_str).collect();
    assert_eq!(worlds, BTreeSet::from(["llm", "llm-async", "llm-attested", "llm-prompt", "ml"]));

    let bytes = wit_component::encode(&resolve, package).expect("the proposal encodes as a WIT package");
    if std::env::var_os("WASI_NN_LLM_BLESS").is_some() {
        std::fs::write(package_file(), &bytes).expect("writing the package file");
    }
    let checked_in = std::fs::read(package_file()).unwrap_or_default();
    assert!(
        checked_in == bytes,
        "{} is not what wit/proposal/ encodes to; regenerate it with \
         `WASI_NN_LLM_BLESS=1 cargo test --release --test proposal`",
        package_file().display()
    );
    // And it reads back as the same package.
    let decoded = wit_component::decode(&checked_in).expect("the package file decodes");
    let resolve = decoded.resolve();
    assert_eq!(resolve.packages[decoded.package()].name.to_string(), "wasi:nn@0.3.0-draft");
}

/// A type as text, by name where it has one: enough to compare two
/// packages' signatures, whose type ids differ.
fn show(resolve: &Resolve, ty: &Type) -> String {
    let Type::Id(id) = ty else { return format!("{ty:?}") };
    let def = &resolve.types[*id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    match &def.kind {
        TypeDefKind::List(t) => format!("list<{}>", show(resolve, t)),
        TypeDefKind::Option(t) => format!("option<{}>", show(resolve, t)),
        TypeDefKind::Tuple(t) => {
            format!("tuple<{}>", t.types.iter().map(|t| show(resolve, t)).collect::<Vec<_>>().join(", "))
        }
        TypeDefKind::Result(r) => format!(
            "result<{}, {}>",
            r.ok.as_ref().map_or("_".into(), |t| show(resolve, t)),
            r.err.as_ref().map_or("_".into(), |t| show(resolve, t))
        ),
        TypeDefKind::Handle(wit_parser::Handle::Own(t)) => format!("own<{}>", show(resolve, &Type::Id(*t))),
        TypeDefKind::Handle(wit_parser::Handle::Borrow(t)) => format!("borrow<{}>", show(resolve, &Type::Id(*t))),
        TypeDefKind::Type(t) => show(resolve, t),
        other => format!("{other:?}"),
    }
}

/// An interface's functions as `name(params) -> result` lines, and its
/// types as `name: kind` lines (enum cases and record fields spelled out).
fn signature(resolve: &Resolve, interface: &Interface) -> (BTreeSet<String>, BTreeSet<String>) {
    let functions = interface
        .functions
        .iter()
        .map(|(name, f)| {
            let params: Vec<String> =
                f.params.iter().map(|p| format!("{}: {}", p.name, show(resolve, &p.ty))).collect();
            let result = f.result.as_ref().map_or(String::new(), |t| show(resolve, t));
            let kind = match f.kind {
                FunctionKind::Constructor(_) => "constructor",
                FunctionKind::Method(_) | FunctionKind::AsyncMethod(_) => "method",
                FunctionKind::Static(_) | FunctionKind::AsyncStatic(_) => "static",
                FunctionKind::Freestanding | FunctionKind::AsyncFreestanding => "free",
            };
            format!("{kind} {name}({}) -> {result}", params.join(", "))
        })
        .collect();
    let types = interface
        .types
        .iter()
        .map(|(name, id)| {
            let kind = match &resolve.types[*id].kind {
                TypeDefKind::Enum(e) => format!("enum {:?}", e.cases.iter().map(|c| &c.name).collect::<Vec<_>>()),
                TypeDefKind::Record(r) => format!(
                    "record {:?}",
                    r.fields.iter().map(|f| format!("{}: {}", f.name, show(resolve, &f.ty))).collect::<Vec<_>>()
                ),
                TypeDefKind::Resource => "resource".into(),
                _ => show(resolve, &Type::Id(*id)),
            };
            format!("{name}: {kind}")
        })
        .collect();
    (functions, types)
}

#[test]
fn the_ml_world_keeps_the_spec_s_tensor_api_and_graph_only_gains_properties() {
    let (spec, spec_package) = load("wit/deps/wasi-nn");
    let (proposal, proposal_package) = load("wit/proposal");
    let added = BTreeSet::from([
        "method [method]graph.list-properties(self: borrow<graph>) -> list<String>".to_owned(),
        "method [method]graph.get-property(self: borrow<graph>, name: String) -> option<String>".to_owned(),
    ]);
    for (name, &id) in &spec.packages[spec_package].interfaces {
        let theirs = &proposal.interfaces[proposal.packages[proposal_package].interfaces[name]];
        let (spec_functions, spec_types) = signature(&spec, &spec.interfaces[id]);
        let (functions, types) = signature(&proposal, theirs);
        assert_eq!(types, spec_types, "interface {name}'s types");
        let gained: BTreeSet<String> = functions.difference(&spec_functions).cloned().collect();
        let lost: Vec<&String> = spec_functions.difference(&functions).collect();
        assert!(lost.is_empty(), "interface {name} lost {lost:?}");
        let expected = if name == "graph" { added.clone() } else { BTreeSet::new() };
        assert_eq!(gained, expected, "interface {name} gained");
    }
    // The `ml` world imports the same four interfaces.
    let imports = |resolve: &Resolve, package: PackageId| -> BTreeSet<String> {
        let world = &resolve.worlds[resolve.packages[package].worlds["ml"]];
        world.imports.keys().map(|k| resolve.name_world_key(k)).collect()
    };
    let strip = |names: BTreeSet<String>| -> BTreeSet<String> {
        names.into_iter().map(|n| n.split('@').next().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(strip(imports(&proposal, proposal_package)), strip(imports(&spec, spec_package)));
    // Every new interface lives in the same package, beside the spec's.
    for name in ["llm-types", "llm-model", "prompt", "session", "async-session", "attestation"] {
        let id = proposal.packages[proposal_package].interfaces[name];
        assert!(matches!(proposal.interfaces[id].package, Some(p) if p == proposal_package), "{name}");
    }
}

/// Every measured figure in RFC.md and its cover letter comes from a
/// results file (`scripts/check-figures.py` says how it traces them), so
/// a rerun of `make bench` that changes a figure fails here until the text
/// says what was measured.
#[test]
fn every_figure_in_the_rfc_is_in_a_results_file() {
    let out = std::process::Command::new("python3")
        .arg(workspace_root().join("scripts/check-figures.py"))
        .output()
        .expect("running python3 scripts/check-figures.py");
    assert!(
        out.status.success(),
        "figures in RFC.md or docs/wg-summary.md that no results file holds:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
