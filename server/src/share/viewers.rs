//! The live viewers of share links on this node: their places (capped per link across the
//! cluster and per client address here), and ending their streams at once when a link is
//! revoked, replaced or its session deleted, wherever in the cluster that happened.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use relay_protocol::{ServerFrame, ShareStatus};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::fanout::next_receiver_id;
use crate::hub::UserHub;
use crate::store::ShareRecord;

/// Why a viewer was not let in.
#[derive(Debug, thiserror::Error)]
pub enum ViewerRefused {
    /// The link has as many live viewers as it may.
    #[error("this conversation has {0} viewers, the most it may have; try again later")]
    Full(usize),
    /// The address holds as many share streams as it may.
    #[error("too many live conversations open from your address (at most {0}); close one")]
    Address(usize),
}

/// Live viewers on this node.
pub struct Viewers {
    /// By session: the viewers here.
    sessions: DashMap<Uuid, Vec<Viewer>>,
    /// Streams held per client address group.
    addresses: DashMap<String, usize>,
    /// Viewers per link on this node (the whole count when alone).
    local: DashMap<Uuid, u32>,
    cluster: OnceLock<Arc<Cluster>>,
    hub: Arc<UserHub>,
}

/// One viewer here: its link, and what ends its stream.
struct Viewer {
    id: u64,
    share_id: Uuid,
    /// When its link was made (a newer link of the session replaces it).
    created_at: chrono::DateTime<chrono::Utc>,
    ended: CancellationToken,
}

/// A viewer's place: held while its stream runs; dropping it gives the place back and
/// tells the owner how many watch now.
pub struct ViewerPlace {
    viewers: Arc<Viewers>,
    id: u64,
    share: ShareRecord,
    address: String,
    counted_in_cluster: bool,
    /// Whether the owner was told of this viewer (then they are told when it leaves).
    announced: bool,
    /// Cancelled when the link stops working (revoked, replaced, session deleted).
    pub ended: CancellationToken,
}

impl Viewers {
    /// Viewers that tell `hub`'s users how many watch their links.
    pub fn new(hub: Arc<UserHub>) -> Arc<Viewers> {
        Arc::new(Viewers {
            sessions: DashMap::new(),
            addresses: DashMap::new(),
            local: DashMap::new(),
            cluster: OnceLock::new(),
            hub,
        })
    }

    /// Counts viewers across the cluster too.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// What a user event means for the streams here: a link revoked, its session deleted,
    /// or a newer link made for it ends the streams of the older link. (A viewer count of
    /// an older link arriving late ends nothing: links are ordered by when they were made.)
    pub fn observe(&self, frame: &ServerFrame) {
        let (session_id, newer_than) = match frame {
            ServerFrame::ShareUpdated { session_id, share } => {
                (*session_id, share.as_ref().map(|s| (s.id, s.created_at)))
            }
            ServerFrame::SessionDeleted { session_id, .. } => (*session_id, None),
            _ => return,
        };
        if let Some(viewers) = self.sessions.get(&session_id) {
            for viewer in viewers.iter() {
                let replaced = match newer_than {
                    None => true,
                    Some((id, created_at)) => id != viewer.share_id && created_at >= viewer.created_at,
                };
                if replaced {
                    viewer.ended.cancel();
                }
            }
        }
    }

    /// Takes a place for a viewer of `share` from `address`, within `max_viewers` for the
    /// link and `max_per_address` for the address. A Redis that does not answer leaves the
    /// link's cap to this node (logged). A request dropped while this waits gives back
    /// what it took.
    pub async fn join(
        self: &Arc<Self>,
        share: &ShareRecord,
        address: String,
        max_viewers: usize,
        max_per_address: usize,
    ) -> Result<ViewerPlace, ViewerRefused> {
        {
            let mut held = self.addresses.entry(address.clone()).or_insert(0);
            if *held >= max_per_address {
                return Err(ViewerRefused::Address(max_per_address));
            }
            *held += 1;
        }
        let local = {
            let mut here = self.local.entry(share.share_id).or_insert(0);
            *here += 1;
            *here
        };
        // From here on the place gives back whatever it holds when dropped, also when the
        // request goes away during the Redis call below.
        let mut place = ViewerPlace {
            viewers: self.clone(),
            id: next_receiver_id(),
            share: share.clone(),
            address,
            counted_in_cluster: false,
            announced: false,
            ended: CancellationToken::new(),
        };
        if local as usize > max_viewers {
            return Err(ViewerRefused::Full(max_viewers));
        }
        let mut count = local;
        if let Some(cluster) = self.cluster.get() {
            // Counted before the call: a request dropped during it gives the place back
            // (a give that overtakes its take is floored at zero by the script).
            place.counted_in_cluster = true;
            match cluster.take_viewer(share.share_id, max_viewers).await {
                Ok(Some(total)) => count = total,
                Ok(None) => {
                    place.counted_in_cluster = false;
                    return Err(ViewerRefused::Full(max_viewers));
                }
                Err(e) => {
                    place.counted_in_cluster = false;
                    tracing::warn!(share_id = %share.share_id, error = %e,
                        "cannot count the viewer in the cluster; capped per node");
                }
            }
        }
        let viewer =
            Viewer { id: place.id, share_id: share.share_id, created_at: share.created_at, ended: place.ended.clone() };
        self.sessions.entry(share.session_id).or_default().push(viewer);
        place.announced = true;
        self.tell_owner(share, count);
        Ok(place)
    }

    /// How many watch a link live now (across the cluster when there is one).
    pub async fn count(&self, share_id: Uuid) -> u32 {
        if let Some(cluster) = self.cluster.get() {
            match cluster.viewers(share_id).await {
                Ok(total) => return total,
                Err(e) => tracing::warn!(%share_id, error = %e, "cannot count a link's viewers in the cluster"),
            }
        }
        self.local.get(&share_id).map_or(0, |n| *n)
    }

    /// Tells the owner's tabs how many watch the link now (not once it expired: the owner
    /// has no link then).
    fn tell_owner(&self, share: &ShareRecord, viewers: u32) {
        if !share.live_at(chrono::Utc::now()) {
            return;
        }
        let status = status_of(share, viewers);
        self.hub.publish(share.user_id, None, |_| ServerFrame::ShareUpdated {
            session_id: share.session_id,
            share: Some(status.clone()),
        });
    }
}

/// A stored link as its owner sees it.
pub fn status_of(share: &ShareRecord, viewers: u32) -> ShareStatus {
    ShareStatus { id: share.share_id, created_at: share.created_at, expires_at: share.expires_at, viewers }
}

fn release_address(viewers: &Viewers, address: &str) {
    if let dashmap::Entry::Occupied(mut held) = viewers.addresses.entry(address.to_owned()) {
        *held.get_mut() = held.get().saturating_sub(1);
        if *held.get() == 0 {
            held.remove();
        }
    }
}

/// Gives a link's place on this node back; the viewers left here.
fn release_local(viewers: &Viewers, share_id: Uuid) -> u32 {
    match viewers.local.entry(share_id) {
        dashmap::Entry::Occupied(mut here) => {
            *here.get_mut() = here.get().saturating_sub(1);
            let left = *here.get();
            if left == 0 {
                here.remove();
            }
            left
        }
        dashmap::Entry::Vacant(_) => 0,
    }
}

impl Drop for ViewerPlace {
    fn drop(&mut self) {
        let viewers = &self.viewers;
        release_address(viewers, &self.address);
        let left_here = release_local(viewers, self.share.share_id);
        if let dashmap::Entry::Occupied(mut session) = viewers.sessions.entry(self.share.session_id) {
            session.get_mut().retain(|viewer| viewer.id != self.id);
            if session.get().is_empty() {
                session.remove();
            }
        }
        // A link that ended has no count to show (its owner was told it is gone).
        let revoked = self.ended.is_cancelled() || !self.announced;
        match (self.counted_in_cluster, viewers.cluster.get()) {
            (true, Some(cluster)) => {
                let (cluster, viewers, share) = (cluster.clone(), viewers.clone(), self.share.clone());
                tokio::spawn(async move {
                    match cluster.give_viewer(share.share_id).await {
                        Ok(left) if !revoked => viewers.tell_owner(&share, left),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(share_id = %share.share_id, error = %e,
                            "could not give a viewer back to the cluster count"),
                    }
                });
            }
            _ if !revoked => viewers.tell_owner(&self.share, left_here),
            _ => {}
        }
    }
}
