//! What agentctl shows: the agents table, the live progress of a run (a spinner line on
//! a terminal, one line per change otherwise, so logs and CI output stay readable), and
//! the final summary. Everything but the outputs goes to stderr.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use agent_core::pb::admin;
use agent_core::{Phase, Resource};
use executor::Progress as Event;
use indicatif::{ProgressBar, ProgressStyle};

/// `agentctl list`: one row per agent.
pub(crate) fn agents_table(agents: &[admin::Agent]) -> String {
    let rows: Vec<[String; 3]> = agents
        .iter()
        .map(|a| {
            let categories: Vec<String> =
                a.supported_task_categories.iter().map(|c| format!("{} (v{})", c.name, c.version)).collect();
            [a.name.clone(), if a.is_sync { "sync" } else { "async" }.to_owned(), categories.join(", ")]
        })
        .collect();
    let header = ["AGENT", "MODE", "TASK TYPES"].map(String::from);
    let widths: Vec<usize> =
        (0..3).map(|i| rows.iter().chain([&header]).map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in [&header].into_iter().chain(&rows) {
        let _ = writeln!(out, "{:<w0$}  {:<w1$}  {}", row[0], row[1], row[2], w0 = widths[0], w1 = widths[1]);
    }
    out
}

/// The live display of one run.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last: String,
    links: BTreeSet<String>,
}

impl Progress {
    pub(crate) fn new(task_type: &str, started: Instant) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                    .unwrap_or(ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let mut p = Self { bar, started, last: String::new(), links: BTreeSet::new() };
        p.show(format!("{task_type}: starting"));
        p
    }

    pub(crate) fn update(&mut self, event: &Event) {
        match event {
            Event::Created(bytes) => self.show(format!("created (resource meta of {bytes} bytes)")),
            Event::GetFailed(e) => self.show(format!("GetTask failed, will retry: {e}")),
            Event::Polled(r) => {
                for link in &r.log_links {
                    if self.links.insert(link.uri.clone()) {
                        self.println(format!("log link: {} {}", link.name, link.uri));
                    }
                }
                self.show(status(r));
            }
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Shows a status; without a terminal only changes are printed, with the elapsed time.
    fn show(&mut self, message: String) {
        if message == self.last {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(message.clone()),
            None => eprintln!("[{:>6.1}s] {message}", self.started.elapsed().as_secs_f64()),
        }
        self.last = message;
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn status(r: &Resource) -> String {
    if r.message.is_empty() { r.phase.to_string() } else { format!("{}: {}", r.phase, r.message) }
}

/// The last line of a run.
pub(crate) fn summary(r: &Resource, elapsed: Duration) -> String {
    let verdict = if r.phase == Phase::Succeeded { "succeeded" } else { "did not succeed" };
    format!("{} after {:.1}s: the task {verdict}", status(r), elapsed.as_secs_f64())
}
