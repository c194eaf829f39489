//! fleethub's domain rules, free of I/O: no sockets, no clock (time is passed in as `now`), no
//! randomness. Twins, identities, access policies, the fleet executor with Jobs v2 and firmware rollouts on
//! it; the hub and the store build on these.

pub mod access;
pub mod configuration;
pub mod executor;
pub mod identity;
pub mod jobs;
pub mod rollout;
pub mod throttle;
pub mod timestamp;
pub mod twin;

pub use timestamp::format_twin_time;
pub use twin::{
    DesiredPatchApplied, InvalidKeyReason, ReportedPatchApplied, ServiceTwinUpdate, TwinDocument,
    TwinLimits, TwinPatchError, TwinSectionKind, UnsupportedTwinSchema, merge_patch_diff,
};
