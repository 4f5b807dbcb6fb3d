//! The protocols, generated from `proto/` by `cargo xtask codegen`: Flyte 1.x agents
//! (`flyteidl.*`, at the top of this module) and Flyte 2 connectors (`flyteidl2.*`, in
//! [`v2`]).
//!
//! Agent crates use the Flyte 1 message types (`core::TaskTemplate`, `core::LiteralMap`,
//! …) whichever protocol a call arrived on. The gRPC server modules in [`service`] and
//! [`v2::connector`] are for agent-core alone; their clients (and [`convert`]) are for the
//! `executor` crate and tests.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, rust_2018_idioms)]
mod generated {
    pub mod flyteidl {
        pub mod core {
            include!("gen/flyteidl.core.rs");
        }
        pub mod admin {
            include!("gen/flyteidl.admin.rs");
        }
        pub mod service {
            include!("gen/flyteidl.service.rs");
        }
    }
    pub mod flyteidl2 {
        pub mod common {
            include!("gen/flyteidl2.common.rs");
        }
        pub mod connector {
            include!("gen/flyteidl2.connector.rs");
        }
        pub mod core {
            include!("gen/flyteidl2.core.rs");
        }
        pub mod logs {
            pub mod dataplane {
                include!("gen/flyteidl2.logs.dataplane.rs");
            }
        }
        pub mod task {
            include!("gen/flyteidl2.task.rs");
        }
    }
}

pub use generated::flyteidl::{admin, core, service};

/// The Flyte 2 connector protocol (`flyteidl2.*`). Its `core` types keep the field
/// numbers of Flyte 1's and only add fields, which is what lets the Flyte 2 front end
/// hand agents Flyte 1 types (see `grpc/v2.rs`).
pub mod v2 {
    pub use super::generated::flyteidl2::{common, connector, core, logs, task};
}

/// Between the generations for a client of an agent that speaks Flyte 2 (the `executor`
/// crate): what a Flyte 2 backend sends for a [`TaskRequest`](crate::TaskRequest) and what
/// its answer means as a [`Resource`](crate::Resource). The same re-encoding the Flyte 2
/// front end does on the way in, so a client cannot drift from the server.
pub mod convert {
    use super::v2::{connector, core};
    use crate::{AgentError, Resource, TaskRequest};

    /// The `CreateTaskRequest` a Flyte 2 backend sends for `task`: inputs named and sorted
    /// by name, template and metadata re-encoded, `connection` as given. Fails only when a
    /// message does not re-encode (the generations share these types' fields, so a
    /// well-formed task always does).
    pub fn v2_create_request(
        task: &TaskRequest,
        connection: Option<core::Connection>,
    ) -> Result<connector::CreateTaskRequest, prost::DecodeError> {
        crate::grpc::v2::create_request(task, connection)
    }

    /// A Flyte 2 `Resource` (a `GetTask` answer) as [`Resource`]. An answer that cannot be
    /// read (duplicate output names, undecodable literals) is an error naming the field.
    pub fn resource_from_v2(resource: &connector::Resource) -> Result<Resource, AgentError> {
        crate::grpc::v2::resource_from_v2(resource)
    }
}

/// Encoded `FileDescriptorSet` of every file in `proto/` (both generations) and the
/// well-known types it imports; served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_the_services() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let service_file = fds.file.iter().find(|f| f.name() == "flyteidl/service/agent.proto").unwrap();
        let names: Vec<_> = service_file.service.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["SyncAgentService", "AsyncAgentService", "AgentMetadataService"]);
    }
}
