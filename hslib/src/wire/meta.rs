//! The hello record of the stream (a postcard body). The checkpoint's metadata record and the
//! region table are [`crate::meta`]'s types: one definition for capture, the wire and restore.

use serde::{Deserialize, Serialize};

use crate::meta::RegionInfo;

/// The first frame of a session, primary to spare: what the image looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The page size the primary tracks at; the replica refuses another.
    pub page_size: u32,
    /// The regions, which fix the shape of the image for the session.
    pub regions: Vec<RegionInfo>,
}
