//! relay-chat's browser client: a Yew app (WebAssembly) on the shared protocol crate. One
//! WebSocket per tab ([`socket`]) carries the live sessions; REST ([`api`]) the rest. The
//! state changes only through [`state::Model::reduce`], so it is tested natively; model
//! output is rendered by [`markdown`], which lets no markup or script through.

pub mod api;
pub mod components;
pub mod ctx;
pub mod effects;
pub mod markdown;
pub mod sequence;
pub mod shared;
pub mod snippet;
pub mod socket;
pub mod state;
pub mod storage;
pub mod theme;
pub mod versions;

/// Mounts the app on the page's `<body>`, in the theme the user chose, in place of the
/// page's first paint (`#skeleton` in `index.html`); a share link's address (`/s/<token>`)
/// gets the read-only shared page instead, without a login.
pub fn start() {
    theme::apply(theme::current());
    if let Some(skeleton) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("skeleton")) {
        skeleton.remove();
    }
    match components::shared_page::token_in_path() {
        Some(token) => {
            let props = components::shared_page::SharedProps { token };
            yew::Renderer::<components::shared_page::SharedPage>::with_props(props).render();
        }
        None => {
            yew::Renderer::<components::app::App>::new().render();
        }
    }
}
