//! The protobuf codec of our gRPC servers: tonic's prost codec, except that a request
//! whose bytes do not decode is the caller's mistake (`INVALID_ARGUMENT`), not ours
//! (`INTERNAL`, which is what the prost codec reports and what clients read as a server
//! bug worth retrying). `cargo xtask codegen` selects it for the generated servers only;
//! the generated clients keep the prost codec, since a response that does not decode is
//! no fault of the request.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode failures reported as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub(crate) struct RequestCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// Decodes requests of type `U`; see [`RequestCodec`].
#[derive(Debug, Clone)]
pub(crate) struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's own error text names a field path and wire type, never the bytes, but
        // the message type is what a caller can act on: it tells which RPC they got wrong.
        self.0.decode(buf).map_err(|_| {
            Status::invalid_argument(format!(
                "the request could not be decoded as {}: its bytes are not a valid protobuf encoding of that \
                 message (check that the client and server use the same .proto files)",
                message_name::<U>()
            ))
        })
    }

    /// A 1 KiB first buffer instead of tonic's 8 KiB: a sync call keeps its request stream
    /// (and this buffer) while it waits on the service, for thousands of calls at once, and
    /// requests are rarely larger; a larger one grows the buffer as it arrives. The yield
    /// threshold stays tonic's 32 KiB.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(1024, 32 * 1024)
    }
}

/// The protobuf full name of a generated message, e.g. `flyteidl.admin.CreateTaskRequest`:
/// `pb.rs` nests the generated modules exactly like the proto packages.
fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    match rust.split_once("::generated::") {
        Some((_, path)) => path.replace("::", "."),
        None => rust.rsplit("::").next().unwrap_or(rust).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_protobuf_full_names() {
        assert_eq!(message_name::<crate::pb::admin::CreateTaskRequest>(), "flyteidl.admin.CreateTaskRequest");
        assert_eq!(message_name::<crate::pb::v2::connector::GetTaskRequest>(), "flyteidl2.connector.GetTaskRequest");
    }
}
