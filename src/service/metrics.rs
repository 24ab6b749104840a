//! Prometheus text metrics: requests by route and status, rejections by
//! code, latency histograms by route, open, evicted, refused and timed-out
//! connections, the free space of the state directory's filesystem, and
//! (filled in at scrape time) the
//! privacy loss charged by all agreements against the lifetime ceiling
//! (nothing per agreement: that is the monitoring report's).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    rejections: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
    audit_entries: u64,
}

/// The service's counters; cheap to update from every request.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The open connections (the server registers them here).
    pub connections: std::sync::Arc<super::conn::Connections>,
    /// The state directory's free space, read at scrape time.
    pub disk: std::sync::OnceLock<super::disk::DiskCheck>,
}

impl Metrics {
    /// Records one finished request. `route` is the matched route
    /// template (`/v1/queries/{name}`), never the raw path.
    pub fn observe(&self, route: &str, status: u16, code: Option<&str>, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        if let Some(code) = code {
            *m.rejections.entry(code.to_string()).or_default() += 1;
        }
        let h = m.latency.entry(route.to_string()).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Counts one audit entry appended to the chain
    /// (`agregat_audit_entries_total`).
    pub fn audit_appended(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .audit_entries += 1;
    }

    /// The exposition text; `lifetime` is the privacy loss charged by all
    /// agreements in all periods, against `ceiling`. Nothing is broken
    /// down by agreement.
    pub fn render(&self, lifetime: Option<f64>, ceiling: f64) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str(
            "# HELP agregat_requests_total Requests answered, by route and HTTP status.\n",
        );
        out.push_str("# TYPE agregat_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "agregat_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP agregat_rejections_total Refused or failed requests, by stable code.\n",
        );
        out.push_str("# TYPE agregat_rejections_total counter\n");
        for (code, n) in &m.rejections {
            let _ = writeln!(
                out,
                "agregat_rejections_total{{code=\"{}\"}} {n}",
                escape(code)
            );
        }
        out.push_str("# HELP agregat_request_duration_seconds Request latency, by route.\n");
        out.push_str("# TYPE agregat_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            let r = escape(route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "agregat_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "agregat_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "agregat_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "agregat_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        out.push_str(
            "# HELP agregat_audit_entries_total Audit entries appended by this process.\n",
        );
        out.push_str("# TYPE agregat_audit_entries_total counter\n");
        let _ = writeln!(out, "agregat_audit_entries_total {}", m.audit_entries);
        let c = self.connections.counts();
        for (name, kind, help, value) in [
            (
                "agregat_connections_open",
                "gauge",
                "Client connections open now.",
                c.open as u64,
            ),
            (
                "agregat_connections_evicted_total",
                "counter",
                "Idle connections closed to admit a new one at a connection cap.",
                c.evicted,
            ),
            (
                "agregat_connections_refused_total",
                "counter",
                "Connections refused at a cap with every connection in a request.",
                c.refused,
            ),
            (
                "agregat_connections_timed_out_total",
                "counter",
                "Connections closed by the header-read, body-read or idle timeout.",
                c.timed_out,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(spent) = lifetime {
            let _ = writeln!(
                out,
                "# HELP agregat_lifetime_privacy_loss Privacy loss (rho) charged by all agreements in all periods.\n# TYPE agregat_lifetime_privacy_loss gauge\nagregat_lifetime_privacy_loss {spent}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP agregat_lifetime_privacy_ceiling The per-person privacy-loss ceiling (rho).\n# TYPE agregat_lifetime_privacy_ceiling gauge\nagregat_lifetime_privacy_ceiling {ceiling}"
        );
        if let Some(d) = self.disk.get() {
            out.push_str(&super::disk::render_metrics(&d.read()));
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.observe("/v1/query", 200, None, Duration::from_millis(3));
        m.observe(
            "/v1/query",
            422,
            Some("identifier_in_group_by"),
            Duration::from_millis(1),
        );
        let t = m.render(Some(0.25), 5.0);
        assert!(
            t.contains("agregat_requests_total{route=\"/v1/query\",status=\"200\"} 1"),
            "{t}"
        );
        assert!(t.contains("agregat_rejections_total{code=\"identifier_in_group_by\"} 1"));
        assert!(t.contains(
            "agregat_request_duration_seconds_bucket{route=\"/v1/query\",le=\"0.005\"} 2"
        ));
        assert!(t.contains("agregat_request_duration_seconds_count{route=\"/v1/query\"} 2"));
        assert!(t.contains("agregat_lifetime_privacy_loss 0.25"), "{t}");
        assert!(!t.contains("agreement="), "no figure per agreement: {t}");
    }
}
