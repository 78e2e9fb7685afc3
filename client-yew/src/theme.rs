//! The colour theme: light, dark, or the system's, chosen by the user and remembered by the
//! browser (it outlives a logout, like any setting of the device). The stylesheet reads it
//! from `data-theme` on `<html>`; without it, `prefers-color-scheme` decides.

use crate::storage;

/// A choice of colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Theme {
    /// Whatever the system prefers.
    System,
    /// Light, whatever the system prefers.
    Light,
    /// Dark, whatever the system prefers.
    Dark,
}

impl Theme {
    /// Every choice, in the order offered.
    pub const ALL: [Theme; 3] = [Theme::System, Theme::Light, Theme::Dark];

    /// The name kept in storage and in `data-theme`.
    pub fn name(self) -> &'static str {
        match self {
            Theme::System => "system",
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
    }

    /// The name shown to the user.
    pub fn label(self) -> &'static str {
        match self {
            Theme::System => "System theme",
            Theme::Light => "Light theme",
            Theme::Dark => "Dark theme",
        }
    }

    /// The theme of a stored name (anything unknown is the system's).
    pub fn from_name(name: &str) -> Theme {
        Theme::ALL.into_iter().find(|t| t.name() == name).unwrap_or(Theme::System)
    }
}

/// The theme the user chose last in this browser.
pub fn current() -> Theme {
    Theme::from_name(&storage::load_theme())
}

/// Remembers `theme` and shows it.
pub fn choose(theme: Theme) {
    storage::save_theme(theme.name());
    apply(theme);
}

/// Shows `theme` (called once at start, before the first paint of the app).
pub fn apply(theme: Theme) {
    let root = web_sys::window().and_then(|w| w.document()).and_then(|d| d.document_element());
    if let Some(root) = root {
        let _ = match theme {
            Theme::System => root.remove_attribute("data-theme"),
            chosen => root.set_attribute("data-theme", chosen.name()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_the_systems() {
        for theme in Theme::ALL {
            assert_eq!(Theme::from_name(theme.name()), theme);
        }
        assert_eq!(Theme::from_name(""), Theme::System);
        assert_eq!(Theme::from_name("purple"), Theme::System);
    }
}
