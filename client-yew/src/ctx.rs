//! What every component can reach ([`Ctx`]): the way to change the state, the tab's
//! connection and the login; and the address bar, which names the open session.
//!
//! `Ctx` changes only at login and logout, so handing it to a component does not make it
//! render again with every change of the state; components get the state they show as
//! properties. What components do to the world (REST calls, frames) is in [`crate::effects`].

use std::rc::Rc;

use uuid::Uuid;
use yew::{Reducible, UseReducerDispatcher};

use crate::socket::Socket;
use crate::state::{Action, Model};

impl Reducible for Model {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        Model::reduce(self, action, js_sys::Date::now())
    }
}

/// What every component can reach.
#[derive(Clone, PartialEq)]
pub struct Ctx {
    /// Changes the state.
    pub dispatcher: UseReducerDispatcher<Model>,
    /// The tab's connection (none before login).
    pub socket: Option<Socket>,
    /// The bearer token (none before login).
    pub token: Option<String>,
}

impl Ctx {
    /// Changes the state.
    pub fn dispatch(&self, action: Action) {
        self.dispatcher.dispatch(action);
    }

    /// Shows a toast.
    pub fn toast(&self, text: impl Into<String>) {
        self.dispatch(Action::Toast(text.into(), None));
    }
}

/// Goes to `path` as a new entry of the browser's history.
pub fn push_path(path: &str) {
    if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
}

/// Changes the address without a new history entry (an address that led nowhere).
pub fn replace_path(path: &str) {
    if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
}

/// The session in the address (`/c/<id>`): the app shows it, whether the session list has
/// loaded it or not.
pub fn session_in_path() -> Option<Uuid> {
    let path = web_sys::window()?.location().pathname().ok()?;
    path.strip_prefix("/c/").and_then(|id| Uuid::parse_str(id.trim_end_matches('/')).ok())
}
