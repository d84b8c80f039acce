//! The route table: per group, the sorted ring ids of every backend and where it lives.
//! Re-exported from `apsis-ring`, which clients and nodes share.

pub use apsis_ring::{Route, RouteTable};
