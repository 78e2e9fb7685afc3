//! Inline SVG icons (stroked outlines in the text colour), hidden from screen readers: the
//! button or link around an icon carries its name in words.

use yew::prelude::*;

/// The icons the client draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icon {
    /// New chat.
    Plus,
    /// Log out.
    Logout,
    /// Rename, edit.
    Pencil,
    /// Delete.
    Trash,
    /// Stop a reply.
    Stop,
    /// Send.
    Send,
    /// Regenerate.
    Again,
    /// Copy.
    Copy,
    /// The session list (phone width).
    Menu,
    /// Dismiss, close.
    Close,
    /// The previous version.
    Left,
    /// The next version.
    Right,
    /// Search.
    Search,
    /// A good reply.
    ThumbUp,
    /// A bad reply.
    ThumbDown,
}

impl Icon {
    /// The SVG path data (24×24 view box).
    fn path(self) -> &'static str {
        match self {
            Icon::Plus => "M12 5v14M5 12h14",
            Icon::Logout => "M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4M16 17l5-5-5-5M21 12H9",
            Icon::Pencil => "M12 20h9M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4Z",
            Icon::Trash => "M3 6h18M8 6V4h8v2M19 6l-1 14H6L5 6M10 11v6M14 11v6",
            Icon::Stop => "M6 6h12v12H6z",
            Icon::Send => "M12 19V5M5 12l7-7 7 7",
            Icon::Again => "M21 12a9 9 0 1 1-3-6.7L21 8M21 3v5h-5",
            Icon::Copy => "M9 9h11v11H9zM5 15H4V4h11v1",
            Icon::Menu => "M3 6h18M3 12h18M3 18h18",
            Icon::Close => "M18 6 6 18M6 6l12 12",
            Icon::Left => "M15 18l-6-6 6-6",
            Icon::Right => "M9 18l6-6-6-6",
            Icon::Search => "M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14ZM21 21l-5-5",
            Icon::ThumbUp => "M7 10v11H3V10zM7 10l4-8a3 3 0 0 1 3 3v4h6a2 2 0 0 1 2 2.3l-1.4 8A2 2 0 0 1 18.6 21H7",
            Icon::ThumbDown => "M17 14V3h4v11zM17 14l-4 8a3 3 0 0 1-3-3v-4H4a2 2 0 0 1-2-2.3l1.4-8A2 2 0 0 1 5.4 3H17",
        }
    }
}

/// The icon, drawn at the size of the text around it.
pub fn show(icon: Icon) -> Html {
    html! {
        <svg class="icon-svg" viewBox="0 0 24 24" width="18" height="18" fill="none" stroke="currentColor"
            stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false">
            <path d={icon.path()} />
        </svg>
    }
}
