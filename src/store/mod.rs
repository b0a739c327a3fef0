//! Everything stasis keeps on disk under the state root: workload state and its
//! reconciliation with what runs, logs, event history, exec session records, checkpoint
//! generations and their export archives, the init store, and the atomic-write primitive they
//! all share.

pub mod archive;
pub mod atomic;
pub mod divergence;
pub mod events;
pub mod generations;
pub mod init_copies;
pub mod log;
pub mod log_index;
pub mod name;
pub mod sessions;
pub mod snapshot;
pub mod state;
