//! `agent-bigquery`: the BigQuery agent server.

// musl's malloc serialises threads on one lock; mimalloc's per-thread heaps doubled the
// static image's throughput, for about 10 MiB more resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

agent_core::main!(
    "Flyte agent for BigQuery query jobs (task type bigquery_query_job_task)",
    agent_bigquery::registry,
    agent_bigquery::HELP
);
