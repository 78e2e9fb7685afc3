//! The root: the state, the connection, and which screen shows.

use std::rc::Rc;

use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use yew::prelude::*;

use super::chat::ChatView;
use super::login::Login;
use super::sidebar::Sidebar;
use super::toasts::Toasts;
use crate::socket::Socket;
use crate::state::{Action, Model};
use crate::{api, storage};

impl Reducible for Model {
    type Action = Action;

    fn reduce(self: Rc<Self>, action: Action) -> Rc<Self> {
        Model::reduce(self, action, js_sys::Date::now())
    }
}

/// What every component can reach: the state and the connection.
#[derive(Clone, PartialEq)]
pub struct Ctx {
    /// The state; dispatch actions to change it.
    pub model: UseReducerHandle<Model>,
    /// The tab's connection (none before login).
    pub socket: Option<Socket>,
}

impl Ctx {
    /// The bearer token, when logged in.
    pub fn token(&self) -> Option<String> {
        self.model.auth.as_ref().map(|(_, token)| token.clone())
    }

    /// Opens a session in this tab, as a new entry of the browser's history.
    pub fn open(&self, session: relay_protocol::Session) {
        set_path(&format!("/c/{}", session.id));
        self.show(session);
    }

    /// Shows a session (the address already names it: Back, Forward, a link).
    fn show(&self, session: relay_protocol::Session) {
        let id = session.id;
        self.model.dispatch(Action::Open(session));
        if let Some(socket) = &self.socket {
            socket.watch(Some(id));
        }
    }

    /// Closes the open session, as a new entry of the browser's history.
    pub fn close(&self) {
        set_path("/");
        self.hide();
    }

    /// Shows no session (the address names none).
    fn hide(&self) {
        self.model.dispatch(Action::Close);
        if let Some(socket) = &self.socket {
            socket.watch(None);
        }
    }

    /// Loads a page of the session list.
    pub fn load_sessions(&self, page: u32) {
        let (Some(token), model) = (self.token(), self.model.clone()) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            match api::sessions(&token, page).await {
                Ok(list) => model.dispatch(Action::SessionsPage { page, sessions: list.sessions, total: list.total }),
                Err(e) => model.dispatch(Action::Toast(e.message, Some(crate::state::Retry::LoadSessions))),
            }
        });
    }

    /// Logs out: forgets the token and the drafts, and closes the connection.
    pub fn logout(&self, notice: Option<String>) {
        storage::clear_auth();
        storage::clear_drafts();
        if let Some(socket) = &self.socket {
            socket.stop();
        }
        set_path("/");
        self.model.dispatch(Action::LoggedOut(notice));
    }
}

fn set_path(path: &str) {
    if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
}

/// Changes the address without a new history entry (an address that led nowhere).
fn replace_path(path: &str) {
    if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(path));
    }
}

/// The session in the address (`/c/<id>`): the app shows it, whether the session list has
/// loaded it or not.
fn session_in_path() -> Option<Uuid> {
    let path = web_sys::window()?.location().pathname().ok()?;
    path.strip_prefix("/c/").and_then(|id| Uuid::parse_str(id.trim_end_matches('/')).ok())
}

/// The app.
#[function_component(App)]
pub fn app() -> Html {
    let model = use_reducer(|| {
        let mut model = Model::default();
        if let Some((user, token)) = storage::load_auth() {
            model = (*Rc::new(model).reduce(Action::LoggedIn { user, token }, 0.0)).clone();
        }
        model
    });
    let socket = use_state(|| None::<Socket>);
    let token = model.auth.as_ref().map(|(_, t)| t.clone());

    // One connection per login.
    {
        let (socket, dispatcher) = (socket.clone(), model.dispatcher());
        use_effect_with(token.clone(), move |token| {
            let started =
                token.clone().map(|token| Socket::start(token, Callback::from(move |a| dispatcher.dispatch(a))));
            socket.set(started.clone());
            move || {
                if let Some(socket) = started {
                    socket.stop();
                }
            }
        });
    }
    let ctx = Ctx { model: model.clone(), socket: (*socket).clone() };

    // After login, and after every reconnect (what changed meanwhile was not heard): the
    // first page of sessions.
    {
        let ctx = ctx.clone();
        let online = model.connection == Some(crate::state::Connection::Online);
        use_effect_with((token.clone(), online), move |(token, online)| {
            if token.is_some() && *online {
                ctx.load_sessions(1);
            }
        });
    }
    // Back and Forward change the address without the app: render again to follow it.
    {
        let update = use_force_update();
        use_effect_with((), move |_| {
            let on_pop = Closure::<dyn Fn(web_sys::Event)>::new(move |_: web_sys::Event| update.force_update());
            let window = web_sys::window();
            if let Some(window) = &window {
                let _ = window.add_event_listener_with_callback("popstate", on_pop.as_ref().unchecked_ref());
            }
            move || {
                if let Some(window) = window {
                    let _ = window.remove_event_listener_with_callback("popstate", on_pop.as_ref().unchecked_ref());
                }
            }
        });
    }
    // The app shows the session the address names: from the list when it has it, else
    // asked of the server (a link to an older session); one that is not the user's (or no
    // longer exists) is said so, and the address goes back to the start.
    {
        let ctx = ctx.clone();
        let wanted = session_in_path();
        let open = model.chat.as_ref().map(|c| c.session.id);
        let listed = wanted.and_then(|id| model.sessions.iter().find(|s| s.id == id).cloned());
        let (asked, last_open) = (use_mut_ref(|| None::<Uuid>), use_mut_ref(|| None::<Uuid>));
        use_effect_with((wanted, open, listed, ctx.socket.is_some()), move |(wanted, open, listed, connected)| {
            let closed_under_us = open.is_none() && *wanted == *last_open.borrow();
            *last_open.borrow_mut() = *open;
            if !*connected || wanted == open {
                *asked.borrow_mut() = None;
                return;
            }
            match (wanted, listed) {
                (None, _) => ctx.hide(),
                // The open session was deleted (here or in another tab).
                (Some(_), _) if closed_under_us => replace_path("/"),
                (Some(_), Some(session)) => ctx.show(session.clone()),
                (Some(id), None) if *asked.borrow() != Some(*id) => {
                    *asked.borrow_mut() = Some(*id);
                    let (ctx, id) = (ctx.clone(), *id);
                    wasm_bindgen_futures::spawn_local(async move {
                        let Some(token) = ctx.token() else { return };
                        match api::session(&token, id).await {
                            Ok(found) if session_in_path() == Some(id) => ctx.show(found.session),
                            Ok(_) => {}
                            Err(e) if e.status == 404 => {
                                replace_path("/");
                                ctx.model.dispatch(Action::Toast(
                                    "That chat was not found: it does not exist, or it is not yours.".into(),
                                    None,
                                ));
                            }
                            Err(e) => ctx.model.dispatch(Action::Toast(e.message, None)),
                        }
                    });
                }
                (Some(_), None) => {}
            }
        });
    }
    // A rate limit's wait ends by itself.
    {
        let model = model.clone();
        let until = model.blocked.as_ref().and_then(|b| b.until_ms);
        use_effect_with(until, move |until| {
            let timer = until.map(|until| {
                let wait = (until - js_sys::Date::now()).max(0.0) as u32 + 50;
                gloo_timers::callback::Timeout::new(wait, move || model.dispatch(Action::Unblock))
            });
            move || drop(timer)
        });
    }
    // A logout notice from the connection (token expired) also forgets the token.
    {
        let logged_out = model.auth.is_none() && model.notice.is_some();
        use_effect_with(logged_out, |logged_out| {
            if *logged_out {
                storage::clear_auth();
            }
        });
    }

    let body = if model.auth.is_none() {
        html! { <Login /> }
    } else {
        html! {
            <div class="layout">
                <Sidebar />
                <ChatView />
            </div>
        }
    };
    let mock = model.model.as_ref().filter(|m| m.mock).map(|m| html! {
        <div class="banner" id="mock-banner">
            { format!("Demo mode: replies come from the built-in mock model, not {} (the server has no SAMBANOVA_API_KEY).", m.name) }
        </div>
    });
    html! {
        <ContextProvider<Ctx> context={ctx}>
            { for mock }
            { body }
            <Toasts />
        </ContextProvider<Ctx>>
    }
}
