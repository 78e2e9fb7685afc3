//! Who may use chat (`FEATURE_CHAT_ENABLED`, `FEATURE_CHAT_ROLLOUT_PERCENT`).

/// Who may use chat (`FEATURE_CHAT_ENABLED`, `FEATURE_CHAT_ROLLOUT_PERCENT`): the
/// proposal's rollout plan as settings. Everyone else gets `404` from the chat routes and
/// the WebSocket, as if chat did not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// `true` (everyone in the share), `false` (nobody) or `admins` (admins only).
    pub enabled: ChatEnabled,
    /// The share of users (0–100) who have chat, stable per user id; admins always do.
    pub percent: u8,
}

/// `FEATURE_CHAT_ENABLED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatEnabled {
    /// Chat is on (for the rollout share).
    Yes,
    /// Chat is off for everyone.
    No,
    /// Chat is on for admins only.
    Admins,
}

impl Rollout {
    /// Whether chat exists at all (else every chat route is `404`, token or not).
    pub fn any(&self) -> bool {
        self.enabled != ChatEnabled::No
    }

    /// Whether a user has chat: admins whenever it is on; others when it is on for all and
    /// their id falls in the share (a UUID's random bits spread users evenly and stably).
    pub fn allows(&self, user_id: uuid::Uuid, admin: bool) -> bool {
        match self.enabled {
            ChatEnabled::No => false,
            ChatEnabled::Admins => admin,
            ChatEnabled::Yes => admin || (user_id.as_u128() % 100) < u128::from(self.percent),
        }
    }
}
