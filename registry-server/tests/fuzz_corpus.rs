//! Replays the committed fuzz corpus and crash regressions (`fixtures/fuzz/corpus/<target>/`
//! and `fixtures/fuzz/regressions/<target>/`) through the fuzz targets' bodies, on stable:
//! what the fuzzer once found stays fixed without nightly or libFuzzer. Here because this
//! crate reaches every parser (store, client and registry).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fuzz")
}

/// Every target and its body; `archive_load` gets a store of its own.
const TARGETS: &[&str] = &[
    "manifest",
    "config",
    "reference",
    "unpack",
    "archive_load",
    "range",
    "upload_range",
    "http_head",
    "chunked",
    "htpasswd",
    "token",
    "challenge",
    "content_range",
];

/// A target's body, as the replay runs it.
type Body = Box<dyn Fn(&[u8])>;

fn body(target: &str) -> Body {
    use strata_client::fuzzing as client;
    use strata_registry::fuzzing as registry;
    use strata_store::fuzzing as store;
    match target {
        "manifest" => Box::new(store::manifest),
        "config" => Box::new(store::config),
        "reference" => Box::new(store::reference),
        "unpack" => Box::new(store::unpack),
        "archive_load" => {
            let dir = tempfile::tempdir().unwrap();
            let st = strata_store::Store::open(&dir.path().join("store")).unwrap();
            Box::new(move |data| store::archive_load(&st, dir.path(), data))
        }
        "range" => Box::new(registry::range),
        "upload_range" => Box::new(registry::upload_range),
        "http_head" => Box::new(registry::http_head),
        "chunked" => Box::new(registry::chunked),
        "htpasswd" => Box::new(registry::htpasswd),
        "token" => Box::new(registry::token),
        "challenge" => Box::new(client::challenge),
        "content_range" => Box::new(client::content_range),
        other => panic!("fuzz target {other} has no body here: add it to TARGETS"),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs every corpus and regression input of `target`; returns how many.
fn replay(target: &str) -> usize {
    let run = body(target);
    let mut inputs = files(&fuzz_dir().join("corpus").join(target));
    assert!(!inputs.is_empty(), "fuzz target {target} has no committed corpus");
    inputs.extend(files(&fuzz_dir().join("regressions").join(target)));
    let mut failed = Vec::new();
    for input in &inputs {
        let data = std::fs::read(input).unwrap();
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(input.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: inputs that fail: {failed:#?}");
    inputs.len()
}

#[test]
fn every_target_has_a_body_a_corpus_and_a_fuzz_target() {
    for sub in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(sub)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                let name = e.file_name().into_string().unwrap();
                assert!(TARGETS.contains(&name.as_str()), "{sub}/{name} is no fuzz target");
            }
        }
    }
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for t in TARGETS {
        assert!(
            fuzz_dir().join(format!("fuzz_targets/{t}.rs")).is_file(),
            "no fuzz_targets/{t}.rs"
        );
        assert!(
            manifest.contains(&format!("name = \"{t}\"")),
            "{t} is not a [[bin]] of the fuzz crate"
        );
    }
}

macro_rules! replays {
    ($($target:ident),* $(,)?) => {$(
        #[test]
        fn $target() {
            let n = super::replay(stringify!($target));
            eprintln!("{}: {n} inputs replayed", stringify!($target));
        }
    )*};
}

mod replay {
    replays!(
        manifest,
        config,
        reference,
        unpack,
        archive_load,
        range,
        upload_range,
        http_head,
        chunked,
        htpasswd,
        token,
        challenge,
        content_range,
    );
}
