//! The service's Prometheus metrics, served at the open route `GET /metrics`: HTTP requests by
//! route template and status class, tasks and workflows enqueued, and rate-limit refusals.
//! Counting is atomics only; rendering reads them and calls no broker, so a scrape is cheap and
//! answers even while the broker is down. Nothing here names a tenant: the route is open.

use axum::http::StatusCode;

use super::routes::Method;
use crate::metrics::{Counter, Kind, Text};

/// Status classes counted per route: 1xx … 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// See the module docs.
pub struct ServiceMetrics {
    /// The route templates, in the order of [`super::routes::routes`].
    routes: Vec<(Method, &'static str)>,
    /// One row per route, then one for requests no route matched; a counter per class.
    requests: Box<[[Counter; 5]]>,
    pub enqueued_tasks: Counter,
    pub enqueued_workflows: Counter,
    pub rate_limited: Counter,
}

impl ServiceMetrics {
    pub fn new(routes: Vec<(Method, &'static str)>) -> ServiceMetrics {
        ServiceMetrics {
            requests: (0..=routes.len()).map(|_| Default::default()).collect(),
            routes,
            enqueued_tasks: Counter::default(),
            enqueued_workflows: Counter::default(),
            rate_limited: Counter::default(),
        }
    }

    /// A request to route number `route` was answered with `status`.
    pub fn request(&self, route: usize, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        let row = route.min(self.routes.len());
        self.requests[row][class].inc();
    }

    /// A request no route matched was answered with `status`.
    pub fn unmatched(&self, status: StatusCode) {
        self.request(self.routes.len(), status);
    }

    pub fn render(&self) -> String {
        let mut text = Text::new();
        text.family(
            "wtq_http_requests_total",
            Kind::Counter,
            "HTTP requests answered, by route template, method and status class (route \"unmatched\": no route).",
        );
        for (row, counts) in self.requests.iter().enumerate() {
            let (method, route) = match self.routes.get(row) {
                Some((method, path)) => (method.as_str().to_ascii_uppercase(), *path),
                None => (String::new(), "unmatched"),
            };
            for (class, count) in CLASSES.iter().zip(counts) {
                let count = count.get();
                if count > 0 {
                    text.sample(
                        "wtq_http_requests_total",
                        &[("route", route), ("method", &method), ("status", class)],
                        count as f64,
                    );
                }
            }
        }
        let counters = [
            (
                "wtq_enqueued_tasks_total",
                "Tasks enqueued through POST /v1/tasks and /v1/tasks/batch.",
                &self.enqueued_tasks,
            ),
            (
                "wtq_enqueued_workflows_total",
                "Workflows submitted through POST /v1/workflows.",
                &self.enqueued_workflows,
            ),
            (
                "wtq_rate_limited_total",
                "Requests refused with 429 because a tenant's enqueue rate was used up.",
                &self.rate_limited,
            ),
        ];
        for (name, help, counter) in counters {
            text.family(name, Kind::Counter, help)
                .sample(name, &[], counter.get() as f64);
        }
        text.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_by_route_and_class() {
        let metrics = ServiceMetrics::new(vec![(Method::Post, "/v1/tasks")]);
        metrics.request(0, StatusCode::CREATED);
        metrics.request(0, StatusCode::CREATED);
        metrics.request(0, StatusCode::TOO_MANY_REQUESTS);
        metrics.unmatched(StatusCode::NOT_FOUND);
        metrics.enqueued_tasks.add(2);
        let text = metrics.render();
        for line in [
            "wtq_http_requests_total{route=\"/v1/tasks\",method=\"POST\",status=\"2xx\"} 2",
            "wtq_http_requests_total{route=\"/v1/tasks\",method=\"POST\",status=\"4xx\"} 1",
            "wtq_http_requests_total{route=\"unmatched\",method=\"\",status=\"4xx\"} 1",
            "wtq_enqueued_tasks_total 2",
            "wtq_enqueued_workflows_total 0",
            "wtq_rate_limited_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
