//! Talking to the guest agent: the hello, control requests, and exec.
use lima_proto::{
    read_frame_async, write_frame_async, AgentInfo, ControlReply, ControlRequest, Hello,
    HelloReply, Purpose, AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

use crate::vsock::{BoxStream, Transport};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the guest agent")]
    Connect(#[source] std::io::Error),
    #[error("guest agent connection failed")]
    Frame(#[from] lima_proto::FrameError),
    #[error("the guest agent closed the connection")]
    Closed,
    #[error("the guest agent refused: {0}")]
    Refused(String),
    #[error("the guest agent speaks protocol version {0}, we speak {PROTOCOL_VERSION}; rebuild the image (`cargo xtask image`)")]
    Version(u32),
    #[error("unexpected reply from the guest agent: {0}")]
    Unexpected(String),
}

/// Connects and exchanges hellos.
pub async fn connect(
    transport: &dyn Transport,
    purpose: Purpose,
) -> Result<(BoxStream, AgentInfo), ClientError> {
    let mut s = transport
        .connect(AGENT_VSOCK_PORT)
        .await
        .map_err(ClientError::Connect)?;
    write_frame_async(&mut s, &Hello::new(purpose)).await?;
    let reply: HelloReply = read_frame_async(&mut s).await?.ok_or(ClientError::Closed)?;
    if reply.version != PROTOCOL_VERSION {
        return Err(ClientError::Version(reply.version));
    }
    let info = reply.result.map_err(ClientError::Refused)?;
    Ok((s, info))
}

/// One control request and its reply.
pub async fn control(
    transport: &dyn Transport,
    req: ControlRequest,
) -> Result<ControlReply, ClientError> {
    let (mut s, _) = connect(transport, Purpose::Control).await?;
    write_frame_async(&mut s, &req).await?;
    read_frame_async(&mut s).await?.ok_or(ClientError::Closed)
}

/// Pings the agent and returns what it says about itself.
pub async fn ping(transport: &dyn Transport) -> Result<AgentInfo, ClientError> {
    let (mut s, info) = connect(transport, Purpose::Control).await?;
    write_frame_async(&mut s, &ControlRequest::Ping).await?;
    match read_frame_async(&mut s).await?.ok_or(ClientError::Closed)? {
        ControlReply::Pong => Ok(info),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}
