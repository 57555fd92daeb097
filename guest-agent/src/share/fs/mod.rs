//! The fuser filesystem of a share: a kernel request the agent cannot
//! answer itself becomes one protocol request whose reply object goes with
//! a callback (or, for reads, a tokio task), so the session threads never
//! wait for the host (see the module docs of [`super`] for the caching and
//! threading rationale).
//!
//! One concern per file; each uses only the files below it:
//!
//! ```text
//!  callbacks.rs  the fuser Filesystem: one method per kernel request
//!  host_dirs.rs  directory reads the listing does not answer, buffered
//!  listing.rs    glue to the listing cache: fetch, prime, local readdirs,
//!                where directories sit, invalidations, forgets
//!  dispatch.rs   ShareFs: a request out, its reply into a callback or task
//!  state.rs      Shared: the data all of the above hold in common
//!  convert.rs    protocol <-> fuser: attributes, times, types, errnos
//! ```
mod callbacks;
mod convert;
mod dispatch;
mod host_dirs;
mod listing;
mod state;

pub(super) use dispatch::ShareFs;
pub(super) use state::Shared;
