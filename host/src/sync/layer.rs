//! The host's end of a `Purpose::Layer` stream: one request, one reply
//! (`lima_proto::layer`). Generic over the stream so unit tests can answer
//! from an in-process fake.
use lima_proto::layer::{Change, LayerInfo, LayerPath, LayerReply, LayerRequest, MAX_READ};
use lima_proto::{read_frame_async, write_frame_async, Purpose};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client;
use crate::vsock::{BoxStream, Transport};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot open a layer stream")]
    Connect(#[source] client::ClientError),
    #[error("layer stream failed")]
    Frame(#[from] lima_proto::FrameError),
    #[error("the guest agent closed the layer stream")]
    Closed,
    #[error("the guest agent: {0}")]
    Guest(String),
    #[error("unexpected reply from the guest agent: {0}")]
    Unexpected(String),
    #[error("cannot stage the layer's content on the host")]
    Staging(#[source] std::io::Error),
    #[error("{0} grew past the {1} bytes the layer reported while being read")]
    Grew(String, u64),
}

pub struct LayerClient<S> {
    stream: S,
}

impl LayerClient<BoxStream> {
    pub async fn connect(transport: &dyn Transport) -> Result<Self, LayerError> {
        let (stream, _) = client::connect(transport, Purpose::Layer)
            .await
            .map_err(LayerError::Connect)?;
        Ok(LayerClient { stream })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LayerClient<S> {
    pub fn new(stream: S) -> Self {
        LayerClient { stream }
    }

    async fn call(&mut self, req: &LayerRequest) -> Result<LayerReply, LayerError> {
        write_frame_async(&mut self.stream, req).await?;
        match read_frame_async(&mut self.stream).await? {
            None => Err(LayerError::Closed),
            Some(LayerReply::Error(e)) => Err(LayerError::Guest(e)),
            Some(r) => Ok(r),
        }
    }

    pub async fn list(&mut self) -> Result<Vec<LayerInfo>, LayerError> {
        match self.call(&LayerRequest::List).await? {
            LayerReply::Layers(l) => Ok(l),
            other => Err(LayerError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn changes(&mut self, id: &str) -> Result<Vec<Change>, LayerError> {
        match self.call(&LayerRequest::Changes { id: id.into() }).await? {
            LayerReply::Changes(c) => Ok(c),
            other => Err(LayerError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The whole file (or symlink target) at `path`, written to `out`;
    /// more than `size` bytes is an error (the guest changed it meanwhile).
    pub async fn read_to(
        &mut self,
        id: &str,
        path: &[u8],
        size: u64,
        out: &mut impl std::io::Write,
    ) -> Result<u64, LayerError> {
        let mut offset = 0u64;
        loop {
            let req = LayerRequest::Read {
                id: id.into(),
                path: path.to_vec(),
                offset,
                len: MAX_READ,
            };
            let data = match self.call(&req).await? {
                LayerReply::Data(d) => d,
                other => return Err(LayerError::Unexpected(format!("{other:?}"))),
            };
            if data.len() > MAX_READ as usize {
                return Err(LayerError::Unexpected(format!(
                    "{} bytes for a read of {MAX_READ}",
                    data.len()
                )));
            }
            offset += data.len() as u64;
            if offset > size {
                return Err(LayerError::Grew(super::paths::show(path), size));
            }
            out.write_all(&data).map_err(LayerError::Staging)?;
            if data.len() < MAX_READ as usize {
                return Ok(offset);
            }
        }
    }

    pub async fn drop_changes(
        &mut self,
        id: &str,
        paths: Vec<LayerPath>,
    ) -> Result<(), LayerError> {
        if paths.is_empty() {
            return Ok(());
        }
        match self
            .call(&LayerRequest::Drop {
                id: id.into(),
                paths,
            })
            .await?
        {
            LayerReply::Done => Ok(()),
            other => Err(LayerError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn discard(&mut self, id: &str) -> Result<(), LayerError> {
        match self.call(&LayerRequest::Discard { id: id.into() }).await? {
            LayerReply::Done => Ok(()),
            other => Err(LayerError::Unexpected(format!("{other:?}"))),
        }
    }
}
