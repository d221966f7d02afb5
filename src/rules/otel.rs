//! `tracing:` compiled, and the standard `OTEL_*` environment variables laid over it.

use super::compile::Compiler;
use crate::config::RulesFile;

/// Spans waiting for export at most, by default (the OpenTelemetry SDK's own default).
pub const DEFAULT_QUEUE: usize = 2048;

/// Where and how the proxy's spans go. Off (`endpoint: None`) unless a collector is named.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector's base URL (`http://host:4318`), or for HTTP a full `.../v1/traces` URL
    /// when it came from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub endpoint: Option<String>,
    /// The endpoint is the traces URL itself: nothing is appended to it.
    pub endpoint_is_full: bool,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: Sampler,
    pub queue: usize,
    /// `tracing.link`, with `{trace_id}` where the id goes.
    pub link: Option<String>,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            endpoint: None,
            endpoint_is_full: false,
            protocol: Protocol::HttpProtobuf,
            service_name: "strangler".into(),
            sampler: Sampler::ParentBased(Root::On),
            queue: DEFAULT_QUEUE,
            link: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

impl Protocol {
    fn parse(text: &str) -> Option<Protocol> {
        match text {
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "http/json" => Some(Protocol::HttpJson),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
            Protocol::Grpc => "grpc",
        })
    }
}

/// The sampler's decision for a trace that starts here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    On,
    Off,
    Ratio(f64),
}

/// `OTEL_TRACES_SAMPLER`: a root decision, and whether a caller's sampled flag wins over it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    Always(Root),
    ParentBased(Root),
}

const SAMPLERS: &str =
    "parentbased_always_on, parentbased_always_off, parentbased_traceidratio, always_on, always_off or traceidratio";

/// As `OTEL_TRACES_SAMPLER` names it, with the ratio after it.
impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (prefix, root) = match self {
            Sampler::Always(r) => ("", r),
            Sampler::ParentBased(r) => ("parentbased_", r),
        };
        match root {
            Root::On => write!(f, "{prefix}always_on"),
            Root::Off => write!(f, "{prefix}always_off"),
            Root::Ratio(r) => write!(f, "{prefix}traceidratio {r}"),
        }
    }
}

impl Sampler {
    /// A sampler by its standard name; `arg` is the ratio of the `traceidratio` ones.
    fn parse(name: &str, arg: f64) -> Option<Sampler> {
        Some(match name {
            "always_on" => Sampler::Always(Root::On),
            "always_off" => Sampler::Always(Root::Off),
            "traceidratio" => Sampler::Always(Root::Ratio(arg)),
            "parentbased_always_on" => Sampler::ParentBased(Root::On),
            "parentbased_always_off" => Sampler::ParentBased(Root::Off),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(arg)),
            _ => return None,
        })
    }
}

impl Tracing {
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }

    /// The standard environment variables over the file's values. `env` reads one variable
    /// (`std::env::var`, or a table in tests). An unusable value is an error naming it.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Tracing, String> {
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
        {
            self.endpoint = None;
            return Ok(self);
        }
        if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.endpoint = Some(url);
            self.endpoint_is_full = true;
        } else if let Some(url) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.endpoint = Some(url);
            self.endpoint_is_full = false;
        }
        if let Some(url) = &self.endpoint {
            check_url(url).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(p) = protocol {
            self.protocol = Protocol::parse(&p).ok_or_else(|| {
                format!("OTEL_EXPORTER_OTLP_PROTOCOL: \"{p}\" is not http/protobuf, http/json or grpc")
            })?;
        }
        if let Some(name) = env("OTEL_SERVICE_NAME") {
            self.service_name = name;
        }
        let arg = match env("OTEL_TRACES_SAMPLER_ARG") {
            Some(a) => Some(
                a.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG: \"{a}\" is not a ratio from 0 to 1"))?,
            ),
            None => None,
        };
        match (env("OTEL_TRACES_SAMPLER"), arg) {
            (Some(name), arg) => {
                self.sampler = Sampler::parse(&name, arg.unwrap_or(1.0))
                    .ok_or_else(|| format!("OTEL_TRACES_SAMPLER: \"{name}\" is not one of {SAMPLERS}"))?;
            }
            // A ratio alone changes the ratio of the sampler in force.
            (None, Some(r)) => {
                self.sampler = match self.sampler {
                    Sampler::Always(Root::Ratio(_)) => Sampler::Always(Root::Ratio(r)),
                    Sampler::ParentBased(Root::Ratio(_)) => Sampler::ParentBased(Root::Ratio(r)),
                    other => other,
                }
            }
            (None, None) => {}
        }
        if let Some(q) = env("OTEL_BSP_MAX_QUEUE_SIZE") {
            self.queue = q
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| format!("OTEL_BSP_MAX_QUEUE_SIZE: \"{q}\" is not a count from 1 to 1000000"))?;
        }
        Ok(self)
    }

    /// `tracing.link` for one trace.
    pub fn link_to(&self, trace_id: &str) -> Option<String> {
        self.link.as_ref().map(|l| l.replace("{trace_id}", trace_id))
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let ok = url
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{url}\" is not an http:// or https:// URL (e.g. http://127.0.0.1:4318)"
        ))
    }
}

impl Compiler<'_> {
    /// `tracing:`, as the file says (the environment is laid over it at start).
    pub(super) fn tracing(&mut self, raw: &RulesFile) -> Tracing {
        let mut out = Tracing::default();
        let Some(t) = &raw.tracing else { return out };
        let t = &t.value;
        if let Some(e) = &t.endpoint {
            match check_url(&e.value) {
                Ok(()) => out.endpoint = Some(e.value.clone()),
                Err(why) => self.err(&e.referenced, None, format!("tracing.endpoint: {why}")),
            }
        }
        if let Some(p) = &t.protocol {
            match Protocol::parse(&p.value) {
                Some(p) => out.protocol = p,
                None => self.err(
                    &p.referenced,
                    None,
                    format!(
                        "tracing.protocol: \"{}\" is not http/protobuf, http/json or grpc",
                        p.value
                    ),
                ),
            }
        }
        if let Some(n) = &t.service_name {
            if n.value.trim().is_empty() {
                self.err(&n.referenced, None, "tracing.service_name: empty".into());
            } else {
                out.service_name = n.value.clone();
            }
        }
        let arg = self.count(&t.sampler_arg, "tracing.sampler_arg", 0.0..=1.0, 1.0);
        if let Some(s) = &t.sampler {
            match Sampler::parse(&s.value, arg) {
                Some(sampler) => out.sampler = sampler,
                None => self.err(
                    &s.referenced,
                    None,
                    format!("tracing.sampler: \"{}\" is not one of {SAMPLERS}", s.value),
                ),
            }
        } else if t.sampler_arg.is_some() {
            out.sampler = Sampler::ParentBased(Root::Ratio(arg));
        }
        out.queue = self.count(&t.queue, "tracing.queue", 1..=1_000_000, DEFAULT_QUEUE as u64) as usize;
        if let Some(l) = &t.link {
            if l.value.contains("{trace_id}") {
                out.link = Some(l.value.clone());
            } else {
                self.err(
                    &l.referenced,
                    None,
                    format!("tracing.link: \"{}\" has no {{trace_id}} to fill in", l.value),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn nothing_configured_is_off() {
        let t = Tracing::default().with_env(env(&[])).unwrap();
        assert!(!t.enabled());
    }

    #[test]
    fn the_variables_override_the_file() {
        let file = Tracing {
            endpoint: Some("http://file:4318".into()),
            sampler: Sampler::ParentBased(Root::Ratio(0.5)),
            ..Tracing::default()
        };
        let t = file
            .clone()
            .with_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]))
            .unwrap();
        assert_eq!(t.endpoint.as_deref(), Some("http://env:4317"));
        assert!(!t.endpoint_is_full);
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.service_name, "edge");
        // A ratio alone keeps the file's sampler and changes its ratio.
        assert_eq!(t.sampler, Sampler::ParentBased(Root::Ratio(0.25)));
        let t = file
            .clone()
            .with_env(env(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/custom"),
            ]))
            .unwrap();
        assert_eq!(t.sampler, Sampler::Always(Root::Ratio(0.0)));
        assert!(t.endpoint_is_full);
        let off = file.with_env(env(&[("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert!(!off.enabled());
    }

    #[test]
    fn a_bad_variable_is_named() {
        for (name, value, says) in [
            ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER: \"sometimes\""),
            ("OTEL_TRACES_SAMPLER_ARG", "2", "OTEL_TRACES_SAMPLER_ARG: \"2\""),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "udp",
                "OTEL_EXPORTER_OTLP_PROTOCOL: \"udp\"",
            ),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "collector:4318",
                "OTEL_EXPORTER_OTLP_ENDPOINT: \"collector:4318\"",
            ),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "OTEL_BSP_MAX_QUEUE_SIZE: \"0\""),
        ] {
            let e = Tracing::default().with_env(env(&[(name, value)])).unwrap_err();
            assert!(e.starts_with(says), "{e}");
        }
    }

    #[test]
    fn settings_print_as_the_variables_name_them() {
        assert_eq!(
            Sampler::ParentBased(Root::Ratio(0.25)).to_string(),
            "parentbased_traceidratio 0.25"
        );
        assert_eq!(Sampler::Always(Root::On).to_string(), "always_on");
        assert_eq!(Protocol::Grpc.to_string(), "grpc");
    }

    #[test]
    fn a_link_fills_in_the_trace_id() {
        let t = Tracing {
            link: Some("https://jaeger.example/trace/{trace_id}".into()),
            ..Tracing::default()
        };
        assert_eq!(
            t.link_to("4bf92f3577b34da6a3ce929d0e0e4736").as_deref(),
            Some("https://jaeger.example/trace/4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
