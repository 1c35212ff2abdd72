//! `runner build` end to end, as root: a Dockerfile over the busybox fixture (ARG, ENV,
//! WORKDIR, COPY with a `.dockerignore`, RUN writing a file and removing one of the base,
//! USER, CMD, LABEL, EXPOSE) gives the config, history and files expected, and runs under
//! `runner start`; the step cache (a no-op rebuild runs nothing, a changed file re-runs
//! from the COPY that reads it, `touch` changes nothing, `--no-cache` re-runs all); a
//! malformed Dockerfile fails with its line number and stores nothing; builds compared
//! with docker's classic builder (also run under `docker run` after `puller save`); `FROM`
//! a registry's image that is not in the store fetches it.

use std::path::Path;
use std::process::{Command, Output};

use strata_fixtures::peers;

use crate::common::{runner, store_with_busybox};

const DOCKERFILE: &str = r#"FROM bb:1
ARG GREETING=hello
ENV APP_HOME=/app MODE="two words"
WORKDIR $APP_HOME
COPY . ./
COPY --chown=65534:65534 --chmod=600 secret.txt /etc/secret.txt
RUN echo "$GREETING from run" > /app/made.txt
RUN rm -f /etc/passwd.bak /data/keep.txt
USER nobody
LABEL org.example.name="my app" version=2
EXPOSE 8080 53/udp
CMD ["/bin/sh", "-c", "cat /app/made.txt /app/hello.txt; ls /app; whoami"]
"#;

fn context(dir: &Path) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(
        ctx.join(".dockerignore"),
        "ignored.txt\nDockerfile\n.dockerignore\n",
    )
    .unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello file\n").unwrap();
    std::fs::write(ctx.join("ignored.txt"), "must not be copied\n").unwrap();
    std::fs::write(ctx.join("sub/inner.txt"), "inner\n").unwrap();
    std::fs::write(ctx.join("secret.txt"), "s3cret\n").unwrap();
    std::os::unix::fs::symlink("hello.txt", ctx.join("link")).unwrap();
    ctx
}

fn build(root: &Path, args: &[&str]) -> Output {
    let out = peers::output(runner(root).arg("build").args(args));
    assert!(out.status.success(), "{}", peers::format_output(&out));
    out
}

fn inspect(root: &Path, image: &str) -> serde_json::Value {
    let out = peers::run_ok(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(root)
            .args(["inspect", image]),
    );
    serde_json::from_str(&out).unwrap()
}

/// (steps, cached, RUN containers) from the build's summary line.
fn counts(out: &Output) -> (usize, usize, usize) {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("from the cache"))
        .unwrap_or_else(|| panic!("no summary in {err}"));
    let n: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn build_makes_the_image_the_dockerfile_describes() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = context(tmp.path());
    // The base's files the RUN removes, one of them made by an earlier RUN-less layer.
    std::fs::write(ctx.join("passwd.bak"), "x\n").unwrap();
    let df = DOCKERFILE.replace("COPY --chown", "COPY passwd.bak /etc/passwd.bak\nCOPY --chown");
    std::fs::write(ctx.join("Dockerfile"), &df).unwrap();
    let out = build(
        &root,
        &[
            "-t",
            "built:1",
            "--build-arg",
            "GREETING=hi",
            ctx.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Step 1/13 : FROM bb:1"), "{stdout}");
    assert!(stdout.contains("Successfully tagged built:1"), "{stdout}");
    assert_eq!(counts(&out), (13, 0, 2));

    let v = inspect(&root, "built:1");
    let config = &v["config"]["config"];
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"APP_HOME=/app") && env.contains(&"MODE=two words"),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.starts_with("GREETING")), "{env:?}");
    assert_eq!(config["WorkingDir"], "/app");
    assert_eq!(config["User"], "nobody");
    assert_eq!(
        config["Cmd"],
        serde_json::json!([
            "/bin/sh",
            "-c",
            "cat /app/made.txt /app/hello.txt; ls /app; whoami"
        ])
    );
    assert_eq!(config["Labels"]["org.example.name"], "my app");
    assert_eq!(config["Labels"]["version"], "2");
    assert_eq!(config["Labels"]["org.strata.fixture"], "busybox");
    assert_eq!(
        config["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );
    // History: the base's entries, then one per instruction, as the classic builder
    // writes them.
    let history = v["config"]["history"].as_array().unwrap();
    let ours: Vec<(&str, bool)> = history[history.len() - 12..]
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let expect_prefix = [
        ("/bin/sh -c #(nop)  ARG GREETING=hello", true),
        ("/bin/sh -c #(nop)  ENV APP_HOME=/app MODE=two words", true),
        ("/bin/sh -c #(nop) WORKDIR /app", false),
    ];
    assert_eq!(ours[..3], expect_prefix, "{ours:#?}");
    assert!(
        ours[3].0.starts_with("/bin/sh -c #(nop) COPY dir:") && ours[3].0.ends_with(" in ./ "),
        "{ours:#?}"
    );
    assert!(
        ours[4].0.starts_with("/bin/sh -c #(nop) COPY file:") && ours[4].0.ends_with(" in /etc/passwd.bak "),
        "{ours:#?}"
    );
    assert!(
        ours[5]
            .0
            .starts_with("/bin/sh -c #(nop) COPY --chown=65534:65534file:")
            && ours[5].0.ends_with(" in /etc/secret.txt "),
        "{ours:#?}"
    );
    assert_eq!(
        ours[6..],
        [
            (
                r#"|1 GREETING=hi /bin/sh -c echo "$GREETING from run" > /app/made.txt"#,
                false
            ),
            (
                "|1 GREETING=hi /bin/sh -c rm -f /etc/passwd.bak /data/keep.txt",
                false
            ),
            ("/bin/sh -c #(nop)  USER nobody", true),
            ("/bin/sh -c #(nop)  LABEL org.example.name=my app version=2", true),
            ("/bin/sh -c #(nop)  EXPOSE 53/udp 8080", true),
            (
                r#"/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "cat /app/made.txt /app/hello.txt; ls /app; whoami"]"#,
                true
            ),
        ],
        "{ours:#?}"
    );
    // The layers: one per WORKDIR (it had to create /app), COPY and RUN.
    let base_layers = inspect(&root, "bb:1")["config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        v["config"]["rootfs"]["diff_ids"].as_array().unwrap().len(),
        base_layers + 6
    );

    // It runs as the image says.
    let out = peers::output(runner(&root).args(["start", "--rm", "built:1"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi from run\nhello file\nhello.txt\nlink\nmade.txt\npasswd.bak\nsecret.txt\nsub\nnobody\n",
        "{}",
        peers::format_output(&out)
    );
    // The files: what was copied (not the ignored ones), modes, owners, links, and the
    // RUN's deletions as whiteouts.
    let check = "stat -c '%n %a %u:%g' /app/hello.txt /app/sub/inner.txt /etc/secret.txt; \
                 readlink /app/link; cat /etc/secret.txt; \
                 for f in /app/ignored.txt /app/Dockerfile /etc/passwd.bak /data/keep.txt; do \
                 test -e $f && echo \"present $f\"; done; echo done";
    let out = peers::output(runner(&root).args([
        "start", "--rm", "-u", "0", "built:1", "--", "/bin/sh", "-c", check,
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/app/hello.txt 644 0:0\n/app/sub/inner.txt 644 0:0\n/etc/secret.txt 600 65534:65534\nhello.txt\ns3cret\ndone\n",
        "{}",
        peers::format_output(&out)
    );
}

#[test]
fn build_steps_are_cached_by_content_not_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = context(tmp.path());
    let c = ctx.to_str().unwrap();
    let first = build(&root, &["-t", "c:1", c]);
    assert_eq!(counts(&first), (12, 0, 2));
    let id = inspect(&root, "c:1")["id"].clone();

    // Nothing changed: every step from the cache, no container, the same image.
    let again = build(&root, &["-t", "c:2", c]);
    assert_eq!(counts(&again), (12, 11, 0));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(stdout.matches(" ---> Using cache").count(), 11, "{stdout}");
    assert_eq!(inspect(&root, "c:2")["id"], id);

    // The same tag again: the metadata is only read (no database file changes).
    let meta = |root: &Path| -> Vec<(String, u64, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(root.join("meta"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().unwrap(),
                )
            })
            .filter(|(n, _, _)| !n.starts_with("LOG") && n != "LOCK")
            .collect();
        v.sort();
        v
    };
    let before = meta(&root);
    assert_eq!(counts(&build(&root, &["-t", "c:1", c])), (12, 11, 0));
    assert_eq!(meta(&root), before);

    // touch alone changes nothing.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for f in ["hello.txt", "secret.txt", "sub/inner.txt"] {
        std::fs::File::options()
            .write(true)
            .open(ctx.join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    let touched = build(&root, &["-t", "c:3", c]);
    assert_eq!(counts(&touched), (12, 11, 0));
    assert_eq!(inspect(&root, "c:3")["id"], id);

    // One source changed: the steps from the COPY that reads it on re-run (the first
    // COPY reads the whole context: it and every later step).
    std::fs::write(ctx.join("secret.txt"), "changed\n").unwrap();
    let changed = build(&root, &["-t", "c:4", c]);
    assert_eq!(counts(&changed), (12, 3, 2), "{}", peers::format_output(&changed));
    assert_ne!(inspect(&root, "c:4")["id"], id);
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "-u",
        "0",
        "c:4",
        "--",
        "cat",
        "/etc/secret.txt",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "changed\n");

    // --no-cache runs everything.
    let all = build(&root, &["--no-cache", "-t", "c:5", c]);
    assert_eq!(counts(&all), (12, 0, 2));
    // And a cache that outlives the run: another build still hits.
    let hit = build(&root, &[c]);
    assert_eq!(counts(&hit).2, 0);
}

/// The store's blobs, by name.
fn blobs(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn build_of_a_malformed_dockerfile_fails_with_its_line_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("bad");
    std::fs::create_dir_all(&ctx).unwrap();
    for (text, expect) in [
        ("FROM bb:1\nENV A=1\n\nFROBNICATE x\n", "line 4"),
        ("FROM bb:1\nRUN echo ok\nENV A=${B\n", "line 3"),
        ("FROM bb:1\nRUN echo ok\nRUN exit 3\n", "line 3"),
        ("FROM bb:1\nCOPY missing.txt /x\n", "line 2"),
        (
            "FROM nosuch:1\nRUN echo x\n",
            "line 1: FROM nosuch:1: no such image in the store",
        ),
        (
            "FROM bb:1\nADD https://example.com/x.tgz /x\n",
            "line 2: ADD https://example.com/x.tgz: URLs",
        ),
    ] {
        std::fs::write(ctx.join("Dockerfile"), text).unwrap();
        let before = blobs(&root);
        let out = peers::output(runner(&root).args(["build", "-t", "bad:1"]).arg(&ctx));
        assert!(!out.status.success(), "{text}: {}", peers::format_output(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{text}: {err}");
        if !text.contains("RUN echo ok\nRUN") {
            assert_eq!(blobs(&root), before, "{text}: something was stored");
        }
        let out = peers::output(
            Command::new(peers::bin("store"))
                .arg("--root")
                .arg(&root)
                .args(["inspect", "bad:1"]),
        );
        assert!(!out.status.success(), "{text}: bad:1 was tagged");
    }
}

#[test]
fn build_add_of_a_hostile_archive_fails_within_its_caps_and_leaves_no_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("hostile");
    std::fs::create_dir_all(&ctx).unwrap();
    // 8.6 MB of gzip: a GNU long-name header declaring an 8 GiB name, then the zeros.
    std::fs::write(
        ctx.join("bomb.tar.gz"),
        strata_fixtures::hostile::gzip_long_name_bomb(8 << 30),
    )
    .unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM bb:1\nADD bomb.tar.gz /x/\n").unwrap();
    // What a killed build leaves: an unlocked scratch directory and its lock file.
    let cache = root.join("cache/build");
    std::fs::create_dir_all(cache.join(".work-0123456789abcdef/add-0/usr")).unwrap();
    std::fs::write(cache.join(".work-0123456789abcdef.lock"), "").unwrap();
    let before = blobs(&root);
    // RLIMIT_AS of 1 GiB: a reader that buffered the declared name would abort on its
    // allocation instead of answering.
    let out = peers::output(
        Command::new("prlimit")
            .arg("--as=1073741824")
            .arg(peers::bin("runner"))
            .arg("--root")
            .arg(&root)
            .args(["build", "-t", "bomb:1"])
            .arg(&ctx),
    );
    assert_eq!(out.status.code(), Some(1), "{}", peers::format_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("bomb.tar.gz") && err.contains("longer than the limit"),
        "{err}"
    );
    assert_eq!(blobs(&root), before, "something was stored");
    let left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".work-") || n.starts_with(".layer-"))
        .collect();
    assert!(left.is_empty(), "scratch left in cache/build: {left:?}");
}

/// The files under `dirs` of an image's container, as `find | stat` and `md5sum` see them
/// (path, type, mode, owner, size, link target, content), run by `run` with `script`.
const LISTING: &str = "cd / && find DIRS -xdev \
    ! -name hostname ! -name hosts ! -name resolv.conf ! -name mtab | sort | \
    while read f; do stat -c '%n %F %a %u:%g' \"$f\"; \
    if [ -L \"$f\" ]; then readlink \"$f\"; elif [ -f \"$f\" ]; then md5sum \"$f\"; fi; done";

/// History texts with the sources' hashes left out (docker's are tarsums of its own).
fn created_by(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| {
            let mut s = s.clone();
            for kind in ["file:", "dir:", "multi:"] {
                if let Some(at) = s.find(kind) {
                    let start = at + kind.len();
                    let end = s[start..]
                        .find(|c: char| !c.is_ascii_hexdigit())
                        .map_or(s.len(), |e| start + e);
                    s.replace_range(start..end, "HASH");
                }
            }
            s
        })
        .collect()
}

#[test]
fn build_matches_dockers_classic_builder() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let Some(d) = docker_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = context(tmp.path());
    // The classic builder has no --chmod.
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE.replace("--chmod=600 ", "")).unwrap();
    let c = ctx.to_str().unwrap();
    build(&root, &["-t", "cmp:1", "--build-arg", "GREETING=hi", c]);
    let out = peers::output(
        d.command(["build", "-t", "cmp:1", "--build-arg", "GREETING=hi", c])
            .env("DOCKER_BUILDKIT", "0"),
    );
    assert!(out.status.success(), "{}", peers::format_output(&out));
    let ours_files = compare_with_docker(&root, d, "cmp:1", "app etc data usr/local root");
    assert!(
        ours_files.contains("app/made.txt regular file 644 0:0")
            && ours_files.contains("etc/secret.txt regular file")
            && !ours_files.contains("data/keep.txt"),
        "{ours_files}"
    );
}

/// Loads the busybox fixture into the engine as `bb:1`.
fn docker_with_busybox(tmp: &Path) -> Option<&'static peers::Dockerd> {
    let d = peers::Dockerd::shared()?;
    let archive = tmp.join("bb.tar");
    strata_fixtures::write_docker_save(
        &archive,
        &[(
            &strata_fixtures::busybox(
                strata_fixtures::Flavor::Docker,
                strata_fixtures::LayerCompression::Gzip,
            ),
            &["bb:1"],
        )],
    );
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    Some(d)
}

/// Compares image `tag` built by both: config fields, history texts (as the config and
/// `store history` give them) with `docker history`'s, the files under `dirs` and what the image
/// prints, also under `docker run` after `puller save` and `docker load` of ours; removes
/// docker's copies. Returns our file listing.
fn compare_with_docker(root: &Path, d: &peers::Dockerd, tag: &str, dirs: &str) -> String {
    // The config.
    let ours = inspect(root, tag)["config"].clone();
    let theirs: serde_json::Value = serde_json::from_str(&d.docker_ok(["image", "inspect", tag])).unwrap();
    let theirs = &theirs[0]["Config"];
    for field in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Labels",
        "Volumes",
    ] {
        let norm = |v: &serde_json::Value| match v {
            serde_json::Value::Null => serde_json::Value::Null,
            serde_json::Value::String(s) if s.is_empty() => serde_json::Value::Null,
            serde_json::Value::Object(o) if o.is_empty() => serde_json::Value::Null,
            v => v.clone(),
        };
        assert_eq!(norm(&ours["config"][field]), norm(&theirs[field]), "{field}");
    }
    // The history, newest first as `docker history` lists it.
    let mut ours_h: Vec<String> = ours["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap_or("").to_string())
        .collect();
    ours_h.reverse();
    let theirs_h: Vec<String> = d
        .docker_ok(["history", "--no-trunc", "--format", "{{.CreatedBy}}", tag])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(created_by(&ours_h), created_by(&theirs_h));
    // `store history`'s CREATED BY and SIZE against `docker history`'s, of ours and of
    // docker's own image after `docker save` and `puller load`.
    let ours_rows = store_history(root, tag);
    let theirs_rows = docker_history(d, tag);
    assert_eq!(
        created_by(&ours_rows.created_by),
        created_by(&theirs_rows.created_by)
    );
    assert_eq!(ours_rows.sizes, theirs_rows.sizes, "sizes of ours");
    assert_eq!(ours_rows.human, theirs_rows.human, "displayed sizes of ours");
    let saved = root.with_file_name(format!("docker-{}.tar", tag.replace(':', "-")));
    d.docker_ok(["save", "-o", saved.to_str().unwrap(), tag]);
    let loaded = root.with_file_name(format!("loaded-{}", tag.replace(':', "-")));
    peers::run_ok(
        Command::new(peers::bin("puller"))
            .arg("--root")
            .arg(&loaded)
            .arg("load")
            .arg(&saved),
    );
    assert_eq!(store_history(&loaded, tag), theirs_rows, "docker's image, loaded");

    // The files, and what the image prints.
    let listing = |out: Output| {
        assert!(out.status.success(), "{}", peers::format_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let script = LISTING.replace("DIRS", dirs);
    let ours_files = listing(peers::output(runner(root).args([
        "start",
        "--rm",
        "-u",
        "0",
        "--entrypoint",
        "/bin/sh",
        tag,
        "--",
        "-c",
        &script,
    ])));
    let theirs_files = listing(d.docker([
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "0",
        "--entrypoint",
        "/bin/sh",
        tag,
        "-c",
        &script,
    ]));
    assert_eq!(ours_files, theirs_files);
    let ours_run = listing(peers::output(runner(root).args(["start", "--rm", tag])));
    let theirs_run = listing(d.docker(["run", "--rm", "--network", "none", tag]));
    assert_eq!(ours_run, theirs_run);
    d.docker_ok(["rmi", tag]);
    // Ours, through `puller save` and `docker load`, runs under docker as it does here.
    let archive = root.with_file_name(format!("{}.tar", tag.replace(':', "-")));
    peers::run_ok(
        Command::new(peers::bin("puller"))
            .arg("--root")
            .arg(root)
            .args(["save", tag, "-o"])
            .arg(&archive),
    );
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    let loaded_run = listing(d.docker(["run", "--rm", "--network", "none", tag]));
    assert_eq!(ours_run, loaded_run);
    d.docker_ok(["rmi", tag]);
    ours_files
}

/// A history's CREATED BY texts (in full), sizes in bytes and sizes as displayed, newest
/// first.
#[derive(Debug, PartialEq, Eq)]
struct History {
    created_by: Vec<String>,
    sizes: Vec<u64>,
    human: Vec<String>,
}

/// `store history` of `image`: `--json` for texts and bytes, the table's SIZE column.
fn store_history(root: &Path, image: &str) -> History {
    let store = |args: &[&str]| {
        peers::run_ok(
            Command::new(peers::bin("store"))
                .arg("--root")
                .arg(root)
                .arg("history")
                .args(args)
                .arg(image),
        )
    };
    let rows: serde_json::Value = serde_json::from_str(&store(&["--json"])).unwrap();
    let rows = rows.as_array().unwrap();
    let table = store(&[]);
    let mut lines = table.lines();
    let head = lines.next().unwrap();
    let (at, end) = (head.find("SIZE").unwrap(), head.find("COMMENT").unwrap());
    History {
        created_by: rows
            .iter()
            .map(|r| r["created_by"].as_str().unwrap().to_string())
            .collect(),
        sizes: rows.iter().map(|r| r["size"].as_u64().unwrap()).collect(),
        human: lines
            .map(|l| {
                l.chars()
                    .skip(at)
                    .take(end - at)
                    .collect::<String>()
                    .trim()
                    .to_string()
            })
            .collect(),
    }
}

/// `docker history` of `image`: full texts, bytes (`--human=false`) and displayed sizes.
fn docker_history(d: &peers::Dockerd, image: &str) -> History {
    let column = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["history"];
        all.extend(args);
        all.push(image);
        d.docker_ok(all).lines().map(str::to_string).collect()
    };
    History {
        created_by: column(&["--no-trunc", "--format", "{{.CreatedBy}}"]),
        sizes: column(&["--human=false", "--format", "{{.Size}}"])
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        human: column(&["--format", "{{.Size}}"]),
    }
}

const MULTI_STAGE: &str = r#"FROM bb:1 AS builder
RUN mkdir -p /out/sub && echo built > /out/sub/a.txt && ln -s sub/a.txt /out/link && chmod 700 /out/sub
FROM builder AS second
RUN echo second > /out/second.txt
FROM bb:1
SHELL ["/bin/sh", "-ec"]
RUN echo shell > /shell.txt
COPY --from=second /out /copied/
COPY --from=builder /etc/passwd /data/layer2.txt /multi/
COPY --from=0 /opaque/ /opq/
COPY --from=second /out/second.txt /one.txt
ADD files.tar.gz /unpacked/
ADD plain.tar /plain
CMD ["/bin/sh", "-c", "cat /copied/link /one.txt; ls /opq /multi"]
ENTRYPOINT ["/bin/echo", "entry"]
VOLUME ["/data/vol"]
STOPSIGNAL SIGQUIT
"#;

#[test]
fn build_multi_stage_matches_dockers_classic_builder() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let Some(d) = docker_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("multi");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), MULTI_STAGE).unwrap();
    // Archives ADD extracts: owners and modes of their own, a hard link, a symlink.
    let archive = |w: &mut dyn std::io::Write| {
        let mut t = tar::Builder::new(w);
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o750);
        dir.set_uid(1000);
        dir.set_gid(1000);
        dir.set_size(0);
        t.append_data(&mut dir, "pkg/", std::io::empty()).unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_mode(0o640);
        f.set_uid(1000);
        f.set_gid(50);
        f.set_size(6);
        t.append_data(&mut f, "pkg/data.txt", &b"inside"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        l.set_size(0);
        l.set_mode(0o640);
        l.set_uid(1000);
        l.set_gid(50);
        t.append_link(&mut l, "pkg/hard.txt", "pkg/data.txt").unwrap();
        let mut s = tar::Header::new_gnu();
        s.set_entry_type(tar::EntryType::Symlink);
        s.set_size(0);
        s.set_mode(0o777);
        t.append_link(&mut s, "pkg/soft", "data.txt").unwrap();
        t.finish().unwrap();
    };
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(ctx.join("files.tar.gz")).unwrap(),
        flate2::Compression::default(),
    );
    archive(&mut gz);
    gz.finish().unwrap();
    archive(&mut std::fs::File::create(ctx.join("plain.tar")).unwrap());
    let c = ctx.to_str().unwrap();
    let out = build(&root, &["-t", "multi:1", c]);
    assert_eq!(counts(&out), (17, 0, 3));
    let out = peers::output(
        d.command(["build", "-t", "multi:1", c])
            .env("DOCKER_BUILDKIT", "0"),
    );
    assert!(out.status.success(), "{}", peers::format_output(&out));
    let files = compare_with_docker(
        &root,
        d,
        "multi:1",
        "copied multi opq one.txt shell.txt unpacked plain",
    );
    assert!(
        files.contains("copied/sub directory 700 0:0") && files.contains("opq/new.txt regular file"),
        "{files}"
    );
    assert!(
        !files.contains("old.txt") && files.contains("shell.txt regular file"),
        "{files}"
    );
    assert!(
        files.contains("unpacked/pkg/data.txt regular file 640 1000:50")
            && files.contains("plain/pkg/hard.txt regular file 640 1000:50")
            && files.contains("plain/pkg directory 750 1000:1000"),
        "{files}"
    );
    // A rebuild: every step from the cache, the stages' sources hashed again.
    let again = build(&root, &["-t", "multi:2", c]);
    assert_eq!(counts(&again), (17, 14, 0));
}

/// With `SOURCE_DATE_EPOCH`, two builds of one Dockerfile and context in two empty stores
/// make the same image, bit for bit (RUN steps included).
#[test]
fn build_with_source_date_epoch_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["one", "two"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    let Some(one) = store_with_busybox(&tmp.path().join("one")) else {
        return;
    };
    let two = store_with_busybox(&tmp.path().join("two")).unwrap();
    let ctx = context(tmp.path());
    let mut ids = Vec::new();
    for root in [&one, &two] {
        let out = peers::output(
            runner(root)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["build", "-t", "repro:1"])
                .arg(&ctx),
        );
        assert!(out.status.success(), "{}", peers::format_output(&out));
        let v = inspect(root, "repro:1");
        assert_eq!(v["config"]["created"], "2023-11-14T22:13:20Z", "{v:#}");
        ids.push(v["id"].clone());
        // Later in time, the same.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(ids[0], ids[1]);
}

/// `FROM scratch`, `--target` (only the stages it needs are built), `.dockerignore`
/// exceptions and globs.
#[test]
fn build_from_scratch_with_a_target_and_globs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("scratch");
    std::fs::create_dir_all(ctx.join("docs")).unwrap();
    for f in ["a.txt", "b.txt", "c.md", "docs/keep.txt", "docs/drop.txt"] {
        std::fs::write(ctx.join(f), f).unwrap();
    }
    std::fs::write(ctx.join(".dockerignore"), "docs\n!docs/keep.txt\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch AS files\nCOPY *.txt docs/ /out/\nLABEL stage=files\n\
         FROM bb:1 AS broken\nCOPY does-not-exist /x\n",
    )
    .unwrap();
    let out = build(
        &root,
        &["--target", "files", "-t", "files:1", ctx.to_str().unwrap()],
    );
    assert_eq!(counts(&out), (3, 0, 0));
    let v = inspect(&root, "files:1");
    let config = &v["config"];
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        1,
        "{config:#}"
    );
    let history: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[0].starts_with("/bin/sh -c #(nop) COPY multi:") && history[0].ends_with(" in /out/ "));
    assert_eq!(history[1], "/bin/sh -c #(nop)  LABEL stage=files");
    // The layer: the globbed files and what the .dockerignore let through, flattened.
    let layer = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let bytes = std::fs::read(root.join("blobs/sha256").join(&layer)).unwrap();
    let mut ar = tar::Archive::new(&bytes[..]);
    let paths: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(paths, ["out/", "out/a.txt", "out/b.txt", "out/keep.txt"]);
    // The whole file fails at the broken stage, with its line.
    let out = peers::output(runner(&root).arg("build").arg(&ctx));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 5"),
        "{}",
        peers::format_output(&out)
    );
}

/// A `registry-server` on loopback, killed when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
}

impl Registry {
    fn start(root: &Path) -> Registry {
        let port = peers::free_port();
        let child = Command::new(peers::bin("registry-server"))
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn registry-server");
        let reg = Registry { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry-server did not start on port {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `FROM` a registry's image that is not in the store: the puller fetches it into the
/// store, the build goes on from it; a rebuild fetches nothing.
#[test]
fn build_from_a_registry_fetches_the_base() {
    if !crate::common::can_run() || peers::require("skopeo").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(&tmp.path().join("registry"));
    let layout = tmp.path().join("layout");
    strata_fixtures::write_oci_layout(
        &layout,
        &[(
            &strata_fixtures::busybox(
                strata_fixtures::Flavor::Oci,
                strata_fixtures::LayerCompression::Gzip,
            ),
            Some("1"),
        )],
    );
    let base = format!("127.0.0.1:{}/t/busybox:1", reg.port);
    peers::skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{base}"),
    ]);
    let root = tmp.path().join("store");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN echo built > /built.txt\nCMD [\"cat\", \"/built.txt\"]\n"),
    )
    .unwrap();
    let c = ctx.to_str().unwrap();
    let out = build(&root, &["-t", "fetched:1", c]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("Fetching {base}")), "{stdout}");
    assert_eq!(counts(&out), (3, 0, 1));
    assert!(inspect(&root, &base)["id"].is_string());
    let out = peers::output(runner(&root).args(["start", "--rm", "fetched:1"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "built\n",
        "{}",
        peers::format_output(&out)
    );
    // Now in the store: nothing fetched, every step from the cache.
    let again = build(&root, &["-t", "fetched:2", c]);
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("Fetching"),
        "{}",
        peers::format_output(&again)
    );
    assert_eq!(counts(&again), (3, 2, 0));
}

/// Layers whose sizes docker counts in its own way: symlinks by their target's length,
/// hard links once (in the context, and made by a `RUN`), whiteouts and directories as
/// nothing, a size displayed as `1e+03kB`; `store history` of ours, and of docker's after
/// `docker save` and `puller load`, shows docker's CREATED BY and SIZE.
const SIZES: &str = r#"FROM bb:1
COPY . /ctx/
RUN ln /ctx/big.bin /ctx/h2 && ln -s /very/long/target/name /s1 && mkdir -p /a/b/c && echo abc > /a/b/c/f && rm /ctx/empty
RUN head -c 30000 /dev/zero > /z1 && ln /z1 /z2 && cp /z1 /z3
RUN head -c 999999 /dev/zero > /big && rm /etc/passwd
RUN rm -rf /ctx/d && echo 1 > /one
ENV X=1
CMD ["/bin/sh", "-c", "cat /one; ls /a/b/c /ctx"]
"#;

#[test]
fn build_history_sizes_match_docker() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let Some(d) = docker_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("sizes");
    std::fs::create_dir_all(ctx.join("d/e")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), SIZES).unwrap();
    let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    std::fs::write(ctx.join("d/big2.bin"), &big).unwrap();
    std::fs::hard_link(ctx.join("big.bin"), ctx.join("d/e/hard.bin")).unwrap();
    std::os::unix::fs::symlink("../big.bin", ctx.join("d/sl")).unwrap();
    std::fs::write(ctx.join("d/e/x.txt"), "hi\n").unwrap();
    std::fs::write(ctx.join("empty"), "").unwrap();
    let c = ctx.to_str().unwrap();
    build(&root, &["-t", "sizes:1", c]);
    let out = peers::output(
        d.command(["build", "-t", "sizes:1", c])
            .env("DOCKER_BUILDKIT", "0"),
    );
    assert!(out.status.success(), "{}", peers::format_output(&out));
    let h = docker_history(d, "sizes:1");
    assert!(h.human.contains(&"1e+03kB".to_string()), "{h:?}");
    compare_with_docker(&root, d, "sizes:1", "ctx a s1 z1 z2 z3 one big");
}

/// `--platform` and `FROM --platform=` take this host's platform (with BuildKit's automatic
/// platform ARGs, `$BUILDPLATFORM` in `FROM` and `ARG TARGETARCH` in a stage) and refuse any
/// other, with the line, storing nothing.
#[test]
fn build_takes_the_hosts_platform_only() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("platform");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM --platform=$BUILDPLATFORM bb:1\nARG TARGETARCH\nARG TARGETPLATFORM\n\
         RUN echo \"$TARGETPLATFORM $TARGETARCH\" > /platform.txt\nCMD [\"cat\", \"/platform.txt\"]\n",
    )
    .unwrap();
    let c = ctx.to_str().unwrap();
    build(&root, &["--platform", "linux/amd64", "-t", "plat:1", c]);
    let out = peers::output(runner(&root).args(["start", "--rm", "plat:1"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "linux/amd64 amd64\n",
        "{}",
        peers::format_output(&out)
    );
    let refused = |args: &[&str], expect: &str| {
        let before = blobs(&root);
        let out = peers::output(runner(&root).arg("build").args(args).arg(c));
        assert!(!out.status.success(), "{}", peers::format_output(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect) && err.contains("no emulation"), "{err}");
        assert_eq!(blobs(&root), before);
    };
    refused(&["--platform", "linux/arm64"], "--platform=linux/arm64");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM bb:1\nRUN echo one\nFROM --platform=linux/arm64 bb:1\nRUN echo two\n",
    )
    .unwrap();
    refused(&[], "line 3: FROM --platform=linux/arm64");
}

/// `FROM` an image with `ONBUILD` triggers runs them first (a `RUN`, an `ENV`, a `COPY` of
/// the new context) and the new image does not keep them, as the classic builder does.
#[test]
fn build_runs_onbuild_triggers_as_docker_does() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let Some(d) = docker_with_busybox(tmp.path()) else {
        return;
    };
    let ctx = tmp.path().join("onbuild");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("base.Dockerfile"),
        "FROM bb:1\nONBUILD RUN echo trig > /trig.txt\nONBUILD ENV T=from-trigger\n\
         ONBUILD COPY hello.txt /h.txt\nCMD [\"cat\", \"/trig.txt\"]\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM onb:1\nRUN echo \"child $T\" > /child.txt\n\
         CMD [\"/bin/sh\", \"-c\", \"cat /trig.txt /h.txt /child.txt\"]\n",
    )
    .unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    let c = ctx.to_str().unwrap();
    let base = ctx.join("base.Dockerfile");
    let b = base.to_str().unwrap();
    build(&root, &["-f", b, "-t", "onb:1", c]);
    let base_triggers = inspect(&root, "onb:1")["config"]["config"]["OnBuild"].clone();
    assert_eq!(base_triggers.as_array().map(Vec::len), Some(3), "{base_triggers}");
    let out = build(&root, &["-t", "onc:1", c]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("# Executing 3 build triggers"),
        "{}",
        peers::format_output(&out)
    );
    assert!(
        inspect(&root, "onc:1")["config"]["config"]["OnBuild"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    for args in [
        &["build", "-f", b, "-t", "onb:1", c][..],
        &["build", "-t", "onc:1", c],
    ] {
        let out = peers::output(d.command(args).env("DOCKER_BUILDKIT", "0"));
        assert!(out.status.success(), "{}", peers::format_output(&out));
    }
    let files = compare_with_docker(&root, d, "onc:1", "trig.txt h.txt child.txt");
    assert!(files.contains("h.txt regular file"), "{files}");
    let out = peers::output(runner(&root).args(["start", "--rm", "onc:1"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "trig\nhello\nchild from-trigger\n",
        "{}",
        peers::format_output(&out)
    );
}
