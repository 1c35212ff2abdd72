//! Prometheus metrics: requests by method and status, latency histogram, bytes in and
//! out, uploads in flight, storage size (computed when scraped).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Of `bytes_out`, those sent from the page cache with `sendfile` (shared with the
    /// connections' `SendfileSlot`s).
    sendfile_bytes: Arc<AtomicU64>,
    /// Of `bytes_in`, upload bodies read beside hyper into aligned buffers (`direct`).
    direct_bytes_in: AtomicU64,
    uploads: AtomicU64,
    /// Parts sent in `multipart/byteranges` answers (partial pulls).
    range_parts: AtomicU64,
    /// The online GC's progress (shared backends).
    pub gc: strata_store::GcProgress,
}

impl Metrics {
    pub fn observe(&self, method: &str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((method.to_string(), status))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn requests_answered(&self) -> u64 {
        self.latency_count.load(Ordering::Relaxed)
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_direct_bytes_in(&self, n: u64) {
        self.direct_bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// A `multipart/byteranges` answer of `parts` ranges went out.
    pub fn add_range_parts(&self, parts: usize) {
        self.range_parts.fetch_add(parts as u64, Ordering::Relaxed);
    }

    /// The counter plain connections add their `sendfile` bytes to.
    pub(crate) fn sendfile_counter(&self) -> Arc<AtomicU64> {
        self.sendfile_bytes.clone()
    }

    pub fn set_uploads(&self, n: usize) {
        self.uploads.store(n as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `storage` is `(blobs, bytes)` when known.
    pub fn render(&self, storage: Option<(u64, u64)>) -> String {
        let mut out = String::new();
        out.push_str("# HELP strata_registry_requests_total HTTP requests by method and status.\n");
        out.push_str("# TYPE strata_registry_requests_total counter\n");
        for ((m, s), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "strata_registry_requests_total{{method=\"{m}\",status=\"{s}\"}} {n}"
            );
        }
        out.push_str("# HELP strata_registry_request_duration_seconds Request latency.\n");
        out.push_str("# TYPE strata_registry_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "strata_registry_request_duration_seconds_bucket{{le=\"{b}\"}} {n}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "strata_registry_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "strata_registry_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "strata_registry_request_duration_seconds_count {count}");
        let counters = [
            (
                "strata_registry_received_bytes_total",
                "counter",
                "Request body bytes received.",
                &self.bytes_in,
            ),
            (
                "strata_registry_sent_bytes_total",
                "counter",
                "Blob and manifest bytes sent.",
                &self.bytes_out,
            ),
            (
                "strata_registry_sendfile_bytes_total",
                "counter",
                "Blob bytes sent with sendfile (zero-copy), part of the bytes sent.",
                &*self.sendfile_bytes,
            ),
            (
                "strata_registry_direct_received_bytes_total",
                "counter",
                "Upload body bytes read beside hyper into aligned buffers and written with O_DIRECT, part of the bytes received.",
                &self.direct_bytes_in,
            ),
            (
                "strata_registry_multipart_range_parts_total",
                "counter",
                "Ranges sent as parts of multipart/byteranges blob answers (partial pulls).",
                &self.range_parts,
            ),
            (
                "strata_registry_uploads_in_flight",
                "gauge",
                "Open upload sessions.",
                &self.uploads,
            ),
        ];
        for (name, kind, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let gc = [
            (
                "strata_registry_gc_running",
                "gauge",
                "A GC is running on this replica.",
                u64::from(self.gc.running.load(Ordering::Relaxed)),
            ),
            (
                "strata_registry_gc_runs_total",
                "counter",
                "GC runs this replica finished.",
                self.gc.runs.load(Ordering::Relaxed),
            ),
            (
                "strata_registry_gc_condemned_blobs_total",
                "counter",
                "Unreferenced blobs condemned by this replica's GC.",
                self.gc.condemned.load(Ordering::Relaxed),
            ),
            (
                "strata_registry_gc_removed_blobs_total",
                "counter",
                "Blobs removed by this replica's GC.",
                self.gc.removed.load(Ordering::Relaxed),
            ),
            (
                "strata_registry_gc_removed_bytes_total",
                "counter",
                "Bytes removed by this replica's GC.",
                self.gc.removed_bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gc {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        if let Some((blobs, bytes)) = storage {
            let _ = writeln!(
                out,
                "# HELP strata_registry_storage_blobs Blobs in the store.\n# TYPE strata_registry_storage_blobs gauge\nstrata_registry_storage_blobs {blobs}"
            );
            let _ = writeln!(
                out,
                "# HELP strata_registry_storage_bytes Bytes of blobs in the store.\n# TYPE strata_registry_storage_bytes gauge\nstrata_registry_storage_bytes {bytes}"
            );
        }
        out
    }
}
