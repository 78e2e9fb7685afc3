//! The screens and their parts. Each takes the state it shows as properties and reaches
//! [`crate::ctx::Ctx`] (below them all) for what it does; none imports the root.

pub mod app;
pub mod banner;
pub mod chat;
pub mod chat_settings;
pub mod composer;
pub mod export_menu;
pub mod icons;
pub mod load_more;
pub mod login;
pub mod message;
pub mod prompt_picker;
pub mod reply_body;
pub mod search;
pub mod share_menu;
pub mod shared_page;
pub mod sidebar;
pub mod toasts;
