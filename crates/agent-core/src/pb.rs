//! The protocols, generated from `proto/` by `cargo xtask codegen`: Flyte 1.x agents
//! (`flyteidl.*`, at the top of this module) and Flyte 2 connectors (`flyteidl2.*`, in
//! [`v2`]).
//!
//! Agent crates use the Flyte 1 message types (`core::TaskTemplate`, `core::LiteralMap`,
//! …) whichever protocol a call arrived on; the gRPC client and server modules in
//! [`service`] and [`v2::connector`] are for agent-core alone.

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
