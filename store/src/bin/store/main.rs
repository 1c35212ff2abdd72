//! `store`: the admin tool for a strata store (list, inspect, history, tag, remove, gc, fsck, du).

mod cli;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use strata_store::{Digest, GcOptions, ImageRef, Store, StoreConfig, StoreFile, default_root};

use cli::{Cli, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = strata_store::error_chain(e.as_ref());
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let file = match &cli.config {
        Some(path) => Some(StoreFile::read(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let root = cli
        .root
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.root.clone()))
        .unwrap_or_else(default_root);
    if let Some(file) = &file
        && file.metadata.backend.as_deref().is_some_and(|b| b != "rocksdb")
    {
        let config =
            StoreConfig::from_sections(&root, &file.storage, &file.metadata).map_err(anyhow::Error::msg)?;
        return run_shared(cli.command, &config);
    }
    let open_rw = || {
        if let Some((pid, program)) = Store::writer(&root)
            && program == "registry-server"
        {
            eprintln!(
                "note: registry-server (pid {pid}) holds this store while it runs; this waits until \
                 it stops. It collects garbage itself ([gc] interval in its config); \
                 `store gc` (or `kill -USR1 {pid}`) makes it collect now."
            );
        }
        Store::open(&root).with_context(|| format!("open store {}", root.display()))
    };
    let open_ro = || Store::open_read_only(&root).with_context(|| format!("open store {}", root.display()));
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Ls { json } => print_ls(&mut out, &open_ro()?, json)?,
        Command::Inspect { target } => {
            let store = open_ro()?;
            let v = store.inspect(&target)?;
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
        }
        Command::History {
            image,
            json,
            no_trunc,
        } => {
            let store = open_ro()?;
            let rows = store.history(&image)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                let table: Vec<[String; 5]> = rows
                    .iter()
                    .map(|r| {
                        let id = match r.id.parse::<Digest>() {
                            Ok(d) if !no_trunc => store
                                .index()
                                .shortest_unique(&d.hex(), 12)
                                .unwrap_or_else(|| d.hex()[..12].to_string()),
                            _ => r.id.clone(),
                        };
                        let created_by = r.created_by.replace(['\t', '\n'], " ");
                        [
                            id,
                            r.created.as_deref().map_or_else(|| "N/A".into(), human_created),
                            if no_trunc {
                                created_by
                            } else {
                                ellipsis(&created_by, 45)
                            },
                            human_size(r.size),
                            r.comment.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &mut out,
                    ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                    &table,
                )?;
            }
        }
        Command::Tag { src, dst } => {
            let store = open_rw()?;
            let resolved = store.resolve(&src)?;
            let manifest = resolved
                .manifest
                .with_context(|| format!("{src} names no manifest"))?;
            let dst_ref = ImageRef::parse(&dst)?;
            if dst_ref.digest.is_some() {
                bail!("cannot tag with a digest reference: {dst}");
            }
            store.tag(&dst_ref, &manifest)?;
        }
        Command::Rm { target } => {
            let store = open_rw()?;
            for line in store.remove(&target)? {
                writeln!(out, "{line}")?;
            }
        }
        Command::Gc { grace, dry_run, wait } => {
            if !wait
                && let Some((pid, program)) = Store::writer(&root)
                && program == "registry-server"
            {
                // The server collects online; ask it to now rather than wait for it to stop.
                if dry_run {
                    bail!("registry-server (pid {pid}) holds the store: a dry run cannot see it; use --wait");
                }
                let target = rustix::process::Pid::from_raw(pid as i32)
                    .with_context(|| format!("pid {pid} in the store lock"))?;
                rustix::process::kill_process(target, rustix::process::Signal::USR1)
                    .with_context(|| format!("signal registry-server (pid {pid})"))?;
                writeln!(
                    out,
                    "registry-server (pid {pid}) holds the store: asked it to collect garbage now \
                     (SIGUSR1; it uses its own [gc] grace period and logs the result)"
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            let store = open_rw()?;
            let report = store.gc(&GcOptions {
                grace,
                dry_run,
                ..GcOptions::default()
            })?;
            writeln!(
                out,
                "{}removed {} blobs ({}), {} layers, {} pooled files, {} partial ingests; expired {} leases; kept {} blobs",
                if dry_run { "would have " } else { "" },
                report.blobs_removed,
                human_size(report.bytes_removed),
                report.layers_removed,
                report.pool_files_removed,
                report.partials_removed,
                report.leases_expired,
                report.blobs_kept,
            )?;
            write_grace_note(&mut out, &report, grace)?;
        }
        Command::Fsck { repair, json } => {
            let store = if repair { open_rw()? } else { open_ro()? };
            let report = store.fsck(repair)?;
            print_fsck(&mut out, &report, json)?;
        }
        Command::Du { json } => {
            let store = open_ro()?;
            let u = store.usage()?;
            print_du(&mut out, &u, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// After a GC: what the grace period kept, and how to collect it now.
fn write_grace_note(
    out: &mut impl Write,
    report: &strata_store::GcReport,
    grace: std::time::Duration,
) -> Result<()> {
    if report.young_blobs_kept > 0 && grace.is_zero() {
        // The collector allows a second of slack for the file system's coarse clock.
        writeln!(
            out,
            "kept {} unreferenced blobs ({}) written less than a second ago; \
             `store gc --grace 0` collects them in a moment",
            report.young_blobs_kept,
            human_size(report.young_bytes_kept),
        )?;
    } else if report.young_blobs_kept > 0 {
        let secs = grace.as_secs();
        let period = match secs {
            s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
            s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        };
        writeln!(
            out,
            "kept {} unreferenced blobs ({}) younger than the grace period of {period}; \
             `store gc --grace 0` collects them now",
            report.young_blobs_kept,
            human_size(report.young_bytes_kept),
        )?;
    }
    Ok(())
}

/// The commands on shared backends (PostgreSQL metadata, S3 blobs): no write lock (the
/// replicas keep running), GC by the collector's lease, fsck re-reading every blob from the
/// backend.
fn run_shared(command: Command, config: &StoreConfig) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let store = std::sync::Arc::new(
        Store::open_with(config).with_context(|| format!("open the store of {}", config.root.display()))?,
    );
    let mut out = std::io::stdout().lock();
    match command {
        Command::Ls { json } => print_ls(&mut out, &store, json)?,
        Command::Inspect { target } => {
            serde_json::to_writer_pretty(&mut out, &store.inspect(&target)?)?;
            writeln!(out)?;
        }
        Command::Gc { grace, dry_run, .. } => {
            let opts = strata_store::SharedGcOptions {
                gc: GcOptions {
                    grace,
                    dry_run,
                    ..GcOptions::default()
                },
                settle: std::time::Duration::from_secs(10),
            };
            let holder = format!("store gc pid {}", std::process::id());
            let progress = strata_store::GcProgress::default();
            match runtime.block_on(store.gc_shared(&opts, &holder, &progress))? {
                Some(report) => {
                    writeln!(
                        out,
                        "{}removed {} blobs ({}); kept {} blobs",
                        if dry_run { "would have " } else { "" },
                        report.blobs_removed,
                        human_size(report.bytes_removed),
                        report.blobs_kept,
                    )?;
                    write_grace_note(&mut out, &report, grace)?;
                }
                None => bail!(
                    "a registry replica is collecting garbage now (it holds the GC lease); try again later"
                ),
            }
        }
        Command::Fsck { repair, json } => {
            if repair {
                bail!(
                    "fsck --repair works on the embedded store only; shared backends are checked, not repaired"
                );
            }
            let report = runtime.block_on(store.fsck_shared())?;
            print_fsck(&mut out, &report, json)?;
        }
        Command::Du { json } => {
            let u = runtime.block_on(store.usage_shared())?;
            print_du(&mut out, &u, json)?;
        }
        Command::History { .. } | Command::Tag { .. } | Command::Rm { .. } => {
            bail!("this command works on the embedded store only (use the registry's API on shared backends)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_ls(out: &mut impl Write, store: &Store, json: bool) -> Result<()> {
    let rows = store.images()?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
    } else {
        let table: Vec<[String; 5]> = rows
            .iter()
            .map(|r| {
                let id = r.id.strip_prefix("sha256:").unwrap_or(&r.id);
                [
                    r.repository.clone(),
                    r.tag.clone(),
                    id.chars().take(12).collect(),
                    human_created(&r.created),
                    human_size(r.size),
                ]
            })
            .collect();
        print_table(
            &mut *out,
            ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            &table,
        )?;
    }
    Ok(())
}

fn print_fsck(out: &mut impl Write, report: &strata_store::FsckReport, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        for f in &report.faults {
            writeln!(out, "{f}")?;
        }
        for n in &report.notes {
            writeln!(out, "note: {n} (gc reclaims it)")?;
        }
        writeln!(
            out,
            "checked {} blobs ({}), {} manifests, {} layers: {} faults, {} repaired",
            report.blobs_checked,
            human_size(report.bytes_hashed),
            report.manifests_checked,
            report.layers_checked,
            report.faults.len(),
            report.faults.len() - report.unrepaired(),
        )?;
    }
    if report.unrepaired() > 0 {
        out.flush()?;
        bail!("fsck found {} unrepaired faults", report.unrepaired());
    }
    Ok(())
}

fn print_du(out: &mut impl Write, u: &strata_store::Usage, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, &u)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "blobs:   {:>8}  {:>10}  ({} on disk)",
            u.blobs,
            human_size(u.blob_bytes),
            human_size(u.blob_disk_bytes)
        )?;
        writeln!(
            out,
            "layers:  {:>8}  {:>10}  ({} on disk, {} shared between layers)",
            u.layers,
            human_size(u.layer_apparent_bytes),
            human_size(u.layer_disk_bytes),
            human_size(u.layer_shared_bytes)
        )?;
        writeln!(
            out,
            "images:  {:>8}\nmanifests: {:>6}\ntags:    {:>8}",
            u.images, u.manifests, u.tags
        )?;
        writeln!(
            out,
            "total on disk: {}",
            human_size(u.blob_disk_bytes + u.layer_disk_bytes)
        )?;
    }
    Ok(())
}

/// A table as docker's CLI prints one (Go's tabwriter: cells padded by 3, at least 10 wide).
fn print_table<const N: usize>(out: &mut impl Write, head: [&str; N], rows: &[[String; N]]) -> Result<()> {
    let mut widths = head.map(|h| h.len().max(7));
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   "));
            }
        }
        s
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Sizes as docker prints them: SI units and Go's `%.3g` (go-units'
/// `HumanSizeWithPrecision(size, 3)`), so `40.3kB`, `1.98MB`, `0B` — and `1e+03kB`.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", go_g(v, 3), UNITS[i])
}

/// Go's `fmt.Sprintf("%.*g", prec, v)` for a finite `v >= 0`: `prec` significant digits,
/// trailing zeros dropped, exponent form when the exponent is below -4 or at least `prec`.
fn go_g(v: f64, prec: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` rounds correctly, as Go does: `d.ddde±x`.
    let e = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let x: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if x < -4 || x >= prec as i32 {
        let m = trim(format!("{}.{}", &digits[..1], &digits[1..]));
        return format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs());
    }
    if x >= 0 {
        let x = x as usize;
        trim(format!("{}.{}", &digits[..=x], &digits[x + 1..]))
    } else {
        trim(format!("0.{}{digits}", "0".repeat((-x - 1) as usize)))
    }
}

/// `s` cut to `max` characters, the last of them `…`, when longer (docker's truncation).
fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `2 days ago`, from an RFC 3339 timestamp.
fn human_created(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "N/A".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86400 => (s / 3600, "hour"),
        s if s < 86400 * 14 => (s / 86400, "day"),
        s if s < 86400 * 60 => (s / (86400 * 7), "week"),
        s if s < 86400 * 365 * 2 => (s / (86400 * 30), "month"),
        s => (s / (86400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}
