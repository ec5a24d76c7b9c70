//! Runtime of maskddp: usage recording, usage plans, parameter layouts, the
//! mask-aware gradient reducer and the collectives it runs on.
//!
//! Users depend on the `maskddp` facade crate, which re-exports everything here.

pub mod collective;
mod error;
mod finite;
mod half_float;
mod launch;
mod layout;
mod model;
mod plan;
mod recorder;
mod reducer;
mod stats;
#[cfg(feature = "train")]
pub mod train;

#[doc(hidden)]
pub mod __private;

pub use collective::{
    Collective, CollectiveError, NonFiniteFound, Op, ScatteredPart, Tag, ThreadCollective,
    ThreadGroup, ThreadGroupConfig, WireBuf,
};
#[cfg(feature = "mpi")]
pub use collective::{MpiCollective, MpiConfig, MpiInitError};
#[cfg(feature = "nccl")]
pub use collective::{NcclCollective, NcclConfig, NcclInitError};
pub use error::DdpError;
pub use launch::{Launch, LaunchEnv, LaunchError, NcclEnv, init_from_env};
pub use layout::{ParamLayout, ParamSlot};
pub use model::DdpModel;
pub use plan::{PlanBuilder, PlanTable, Usage, UsagePlan};
pub use recorder::{UsageRecord, record_usage};
pub use reducer::{
    Averaging, NonFinite, Pipeline, Reducer, ReducerConfig, WireFormat, parameter_checksum,
};
pub use stats::{StatsSummary, StepStats};
