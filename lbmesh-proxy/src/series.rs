//! Metric series as plain atomics, and the maps that name and render them.
//!
//! The prometheus crate's labelled children each keep their own copy of
//! their family's description and label pairs, about 600 bytes a child
//! and some fifty children a service with three backends: at thousands
//! of services that was most of lbd's memory (a heap profile of 1,000
//! services put 31 KB a service there). Here a series is only its atomics
//! ([`Counter`], [`Gauge`], [`Histogram`]), and a [`SeriesMap`] holds the
//! label values of each series once and renders every family drawn from
//! its series when Prometheus scrapes.
//!
//! ```text
//! routing table build ─> SeriesMap::series(labels, make) ─> Arc<S> held by the route
//! connection path     ─> Arc<S>.counter.inc()            (an atomic; nothing looked up)
//! scrape ─> MapsCollector::collect ─> each map's exports ─> MetricFamily
//! ```
//!
//! The map's lock is taken on the control path (a build, a removal) and
//! by a scrape, never by a connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }

    pub fn set(&self, value: i64) {
        self.0.store(value, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Durations in seconds over fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is over every
    /// bound (`+Inf`).
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, in nanoseconds: an integer add, where
    /// an `f64` sum would need a compare-and-swap loop.
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn observe(&self, seconds: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        // Saturating float-to-int: a negative or NaN reading adds nothing.
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|count| count.load(Relaxed)).sum()
    }

    fn render(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(bound, count)| {
                cumulative += count.load(Relaxed);
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(self.count());
        histogram.set_sample_sum(self.sum_nanos.load(Relaxed) as f64 / 1e9);
        histogram
    }
}

/// A label value and the counter of a series that carries it.
pub type LabelledCounter<S> = (&'static str, fn(&S) -> &Counter);

/// Label values, one per label of the map, in order.
type LabelValues = Box<[Box<str>]>;

/// How one exported family reads a series.
pub enum Reading<S> {
    Counter(fn(&S) -> &Counter),
    Gauge(fn(&S) -> &Gauge),
    Histogram(fn(&S) -> &Histogram),
    /// Counters split by one more label: its name and, per value, the
    /// counter.
    CountersBy(&'static str, Vec<LabelledCounter<S>>),
    /// An array of counters split by one more label: its name, the value
    /// of each element in order, and the array.
    CounterArray(&'static str, Vec<&'static str>, fn(&S) -> &[Counter]),
}

/// One family drawn from the series of a map.
pub struct Export<S> {
    pub name: &'static str,
    pub help: &'static str,
    pub reading: Reading<S>,
}

impl<S> Export<S> {
    pub fn new(name: &'static str, help: &'static str, reading: Reading<S>) -> Self {
        Self {
            name,
            help,
            reading,
        }
    }
}

/// Series of one label set (`service, backend, task, node`, ...), by
/// their label values, and the families drawn from them.
pub struct SeriesMap<S> {
    labels: &'static [&'static str],
    exports: Vec<Export<S>>,
    series: Mutex<BTreeMap<LabelValues, Arc<S>>>,
}

impl<S> SeriesMap<S> {
    pub fn new(labels: &'static [&'static str], exports: Vec<Export<S>>) -> Self {
        Self {
            labels,
            exports,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The series of `values` (one per label, in order), made by `make`
    /// if there is none: the same values give the same series.
    pub fn series(&self, values: &[&str], make: impl FnOnce() -> S) -> Arc<S> {
        let key = key(values);
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(series.entry(key).or_insert_with(|| Arc::new(make())))
    }

    /// Drops the series of `values`; its holders keep counting into
    /// nothing that is exported.
    pub fn remove(&self, values: &[&str]) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.remove(&key(values));
    }

    /// How many series the map holds.
    pub fn len(&self) -> usize {
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn descs(&self) -> Vec<Desc> {
        self.exports
            .iter()
            .filter_map(|export| {
                let mut labels: Vec<String> = self.labels.iter().map(|l| (*l).to_owned()).collect();
                if let Reading::CountersBy(extra, _) | Reading::CounterArray(extra, ..) =
                    &export.reading
                {
                    labels.push((*extra).to_owned());
                }
                Desc::new(
                    export.name.to_owned(),
                    export.help.to_owned(),
                    labels,
                    Default::default(),
                )
                .ok()
            })
            .collect()
    }

    fn render(&self, families: &mut Vec<MetricFamily>) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if series.is_empty() {
            return;
        }
        for export in &self.exports {
            let mut metrics = Vec::new();
            for (values, each) in series.iter() {
                let pairs = || label_pairs(self.labels, values);
                match &export.reading {
                    Reading::Counter(read) => {
                        metrics.push(metric(pairs(), |m| {
                            let mut counter = proto::Counter::default();
                            counter.set_value(read(each).get() as f64);
                            m.set_counter(counter);
                        }));
                    }
                    Reading::Gauge(read) => {
                        metrics.push(metric(pairs(), |m| {
                            let mut gauge = proto::Gauge::default();
                            gauge.set_value(read(each).get() as f64);
                            m.set_gauge(gauge);
                        }));
                    }
                    Reading::Histogram(read) => {
                        metrics.push(metric(pairs(), |m| m.set_histogram(read(each).render())));
                    }
                    Reading::CountersBy(extra, by) => {
                        for (value, read) in by {
                            metrics.push(counter_by(pairs(), extra, value, read(each)));
                        }
                    }
                    Reading::CounterArray(extra, names, read) => {
                        for (value, counter) in names.iter().zip(read(each)) {
                            metrics.push(counter_by(pairs(), extra, value, counter));
                        }
                    }
                }
            }
            let mut family = MetricFamily::default();
            family.set_name(export.name.to_owned());
            family.set_help(export.help.to_owned());
            family.set_field_type(match export.reading {
                Reading::Counter(_) | Reading::CountersBy(..) | Reading::CounterArray(..) => {
                    MetricType::COUNTER
                }
                Reading::Gauge(_) => MetricType::GAUGE,
                Reading::Histogram(_) => MetricType::HISTOGRAM,
            });
            family.set_metric(metrics);
            families.push(family);
        }
    }
}

fn key(values: &[&str]) -> LabelValues {
    values.iter().map(|value| Box::from(*value)).collect()
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn label_pairs(names: &[&str], values: &[Box<str>]) -> Vec<LabelPair> {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| pair(name, value))
        .collect()
}

/// A counter's metric with `labels` and `extra="value"`.
fn counter_by(
    mut labels: Vec<LabelPair>,
    extra: &str,
    value: &str,
    counter: &Counter,
) -> proto::Metric {
    labels.push(pair(extra, value));
    metric(labels, |m| {
        let mut reading = proto::Counter::default();
        reading.set_value(counter.get() as f64);
        m.set_counter(reading);
    })
}

/// A metric with `labels` (sorted by name, as the prometheus crate's own
/// children are), filled in by `fill`.
fn metric(mut labels: Vec<LabelPair>, fill: impl FnOnce(&mut proto::Metric)) -> proto::Metric {
    labels.sort_by(|a, b| a.name().cmp(b.name()));
    let mut metric = proto::Metric::default();
    metric.set_label(labels);
    fill(&mut metric);
    metric
}

/// A map whose families a collector renders.
pub trait Render: Send + Sync {
    fn descs(&self) -> Vec<Desc>;
    fn render(&self, families: &mut Vec<MetricFamily>);
}

impl<S: Send + Sync> Render for SeriesMap<S> {
    fn descs(&self) -> Vec<Desc> {
        SeriesMap::descs(self)
    }

    fn render(&self, families: &mut Vec<MetricFamily>) {
        SeriesMap::render(self, families);
    }
}

/// The collector registered for a set of maps: their families' names at
/// registration, their series at each scrape.
pub struct MapsCollector {
    descs: Vec<Desc>,
    maps: Vec<Arc<dyn Render>>,
}

impl MapsCollector {
    pub fn new(maps: Vec<Arc<dyn Render>>) -> Self {
        Self {
            descs: maps.iter().flat_map(|map| map.descs()).collect(),
            maps,
        }
    }
}

impl Collector for MapsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        for map in &self.maps {
            map.render(&mut families);
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        hits: Counter,
        open: Gauge,
        took: Histogram,
        refused: Counter,
        other: Counter,
    }

    fn pair_map() -> SeriesMap<Pair> {
        SeriesMap::new(
            &["service", "backend"],
            vec![
                Export::new("t_hits_total", "Hits.", Reading::Counter(|p| &p.hits)),
                Export::new("t_open", "Open.", Reading::Gauge(|p| &p.open)),
                Export::new("t_took_seconds", "Took.", Reading::Histogram(|p| &p.took)),
                Export::new(
                    "t_errors_total",
                    "Errors.",
                    Reading::CountersBy(
                        "reason",
                        vec![("refused", |p| &p.refused), ("other", |p| &p.other)],
                    ),
                ),
            ],
        )
    }

    fn new_pair() -> Pair {
        Pair {
            hits: Counter::default(),
            open: Gauge::default(),
            took: Histogram::new(&[0.01, 0.1]),
            refused: Counter::default(),
            other: Counter::default(),
        }
    }

    fn text(map: Arc<SeriesMap<Pair>>) -> String {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(MapsCollector::new(vec![map])))
            .expect("register");
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn series_render_as_the_prometheus_crate_would() {
        let map = Arc::new(pair_map());
        let web = map.series(&["web", "10.0.0.1:80"], new_pair);
        web.hits.inc_by(3);
        web.open.inc();
        web.open.inc();
        web.open.dec();
        web.refused.inc();
        web.took.observe(0.005);
        web.took.observe(0.05);
        web.took.observe(5.0);
        // The same labels give the same series.
        map.series(&["web", "10.0.0.1:80"], new_pair).hits.inc();
        let scraped = text(Arc::clone(&map));
        for line in [
            "# TYPE t_hits_total counter",
            r#"t_hits_total{backend="10.0.0.1:80",service="web"} 4"#,
            r#"t_open{backend="10.0.0.1:80",service="web"} 1"#,
            r#"t_errors_total{backend="10.0.0.1:80",reason="refused",service="web"} 1"#,
            r#"t_errors_total{backend="10.0.0.1:80",reason="other",service="web"} 0"#,
            "# TYPE t_took_seconds histogram",
            r#"t_took_seconds_bucket{backend="10.0.0.1:80",service="web",le="0.01"} 1"#,
            r#"t_took_seconds_bucket{backend="10.0.0.1:80",service="web",le="0.1"} 2"#,
            r#"t_took_seconds_bucket{backend="10.0.0.1:80",service="web",le="+Inf"} 3"#,
            r#"t_took_seconds_sum{backend="10.0.0.1:80",service="web"} 5.055"#,
            r#"t_took_seconds_count{backend="10.0.0.1:80",service="web"} 3"#,
        ] {
            assert!(
                scraped.lines().any(|l| l == line),
                "{line} missing from:\n{scraped}"
            );
        }

        // A removed series leaves the output; its holder counts on unseen.
        map.remove(&["web", "10.0.0.1:80"]);
        web.hits.inc();
        assert!(map.is_empty());
        assert!(!text(map).contains("t_hits_total"));
    }
}
