//! Host file server for shared folders (issue "Shared folders"): serves one
//! host directory per mount to the guest agent's FUSE client over a vsock
//! stream. Not implemented yet; `mounts:` in `lima.yaml` is accepted and
//! reported as unused until it is.
