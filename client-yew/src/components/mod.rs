//! The screens and their parts.

pub mod app;
pub mod chat;
pub mod login;
pub mod sidebar;
pub mod toasts;
