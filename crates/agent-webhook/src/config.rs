//! Settings of the webhook agent: the `webhook` section of the configuration.

use std::path::PathBuf;

use agent_core::Description;
use serde::{Deserialize, Serialize};

/// No environment variable of flytekit's means a webhook setting.
pub(crate) const ENV: &[(&str, &str)] = &[];

/// What the agent reads, for `--help` (a test keeps it equal to [`Config`]).
pub const HELP: Description = Description::of::<Config>("webhook")
    .settings(&[
        ("allow_cidrs", "Ranges (CIDR, or one address) webhooks may reach although forbidden by default."),
        ("deny_cidrs", "More ranges webhooks never reach; wins over allow_cidrs."),
        ("allow_hosts", "When set, the only hosts webhooks call (.example.com: every host below it)."),
        ("deny_hosts", "Hosts webhooks never call, in the same form."),
        ("max_redirects", "Redirects followed, each checked as the first URL was (flytekit follows none)."),
        ("max_response_bytes", "Largest answer read, in bytes; a larger one fails the task."),
        ("ca_bundle", "Extra PEM bundle of CAs to trust beside the system's (an internal webhook's)."),
        ("send_trace_context", "Send the call's W3C traceparent to webhooks (third parties: off by default)."),
    ])
    .env_defaults(ENV)
    .request_secrets(&[(
        "any {secrets.NAME}",
        "A header's {secrets.NAME} is the request's secret NAME, never the pod's.",
    )]);

/// `webhook.*` settings (`AGENT_WEBHOOK__<KEY>` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address ranges (CIDR, or one address) webhooks may reach although they are
    /// forbidden by default (loopback, link-local, private, shared, multicast, reserved):
    /// e.g. an in-cluster service's range.
    pub allow_cidrs: Vec<String>,
    /// More ranges webhooks never reach; wins over `allow_cidrs`.
    pub deny_cidrs: Vec<String>,
    /// When set, the only hosts webhooks may call: `hooks.slack.com`, or `.example.com`
    /// for every host below it. Their addresses are still checked.
    pub allow_hosts: Vec<String>,
    /// Hosts webhooks never call, in the same form.
    pub deny_hosts: Vec<String>,
    /// Redirects followed, each checked as the first URL was. flytekit follows none (a
    /// redirect is a failed task), which is the default. A task whose headers carry one of
    /// its secrets never follows a redirect.
    pub max_redirects: usize,
    /// Largest answer read, in bytes; a larger one fails the task saying so.
    pub max_response_bytes: usize,
    /// Extra PEM bundle of CAs to trust beside the system's (an internal webhook's).
    pub ca_bundle: Option<PathBuf>,
    /// Sends the call's W3C `traceparent` with each webhook request when traces are
    /// exported. Off by default: a webhook is a third party, which learns nothing of the
    /// platform's traces unless the operator wants it to (an internal service that traces).
    /// A template's own `traceparent` header is never replaced.
    pub send_trace_context: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            deny_hosts: ["localhost", ".localhost", "metadata", "metadata.google.internal", ".cluster.local", ".svc"]
                .map(String::from)
                .to_vec(),
            max_redirects: 0,
            max_response_bytes: 1024 * 1024,
            ca_bundle: None,
            send_trace_context: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` lists every setting, and lists split from the environment and `--set`.
    #[test]
    fn the_description_matches_the_settings() {
        agent_core::testing::conformance::description(&HELP);
        let vars = [("AGENT_WEBHOOK__ALLOW_CIDRS", "10.1.0.0/16,10.2.0.0/16"), ("AGENT_WEBHOOK__DENY_HOSTS", "")];
        let config: Config = agent_core::testing::section_of(&HELP, &vars).unwrap();
        assert_eq!(config.allow_cidrs, ["10.1.0.0/16", "10.2.0.0/16"]);
        assert!(config.deny_hosts.is_empty(), "an empty value clears the default list");
    }
}
