//! relay-chat's browser client: a Yew app (WebAssembly) on the shared protocol crate. One
//! WebSocket per tab ([`socket`]) carries the live sessions; REST ([`api`]) the rest. The
//! state changes only through [`state::Model::reduce`], so it is tested natively; model
//! output is rendered by [`markdown`], which lets no markup or script through.

pub mod api;
pub mod components;
pub mod markdown;
pub mod sequence;
pub mod socket;
pub mod state;
pub mod storage;
pub mod theme;

/// Mounts the app on the page's `<body>`, in the theme the user chose.
pub fn start() {
    theme::apply(theme::current());
    yew::Renderer::<components::app::App>::new().render();
}
