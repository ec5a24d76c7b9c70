//! Runtime of maskddp: usage recording, usage plans and parameter layouts.
//!
//! Users depend on the `maskddp` facade crate, which re-exports everything here.

mod layout;
mod model;
mod plan;
mod recorder;

#[doc(hidden)]
pub mod __private;

pub use layout::{ParamLayout, ParamSlot};
pub use model::DdpModel;
pub use plan::{PlanBuilder, PlanTable, Usage, UsagePlan};
pub use recorder::{UsageRecord, record_usage};
