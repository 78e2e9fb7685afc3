//! The root: the state, the connection, the address bar, and which screen shows.

use std::rc::Rc;

use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use yew::prelude::*;

use super::banner::MockBanner;
use super::chat::ChatView;
use super::login::Login;
use super::search::SearchBox;
use super::sidebar::Sidebar;
use super::toasts::Toasts;
use crate::ctx::{Ctx, replace_path, session_in_path};
use crate::socket::Socket;
use crate::state::{Action, Connection, Model};
use crate::storage;

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
    let ctx = use_memo(((*socket).clone(), token.clone()), |(socket, token)| Ctx {
        dispatcher: model.dispatcher(),
        socket: socket.clone(),
        token: token.clone(),
    });
    let ctx = (*ctx).clone();

    // After login, and after every reconnect (what changed meanwhile was not heard): the
    // first page of sessions.
    {
        let ctx = ctx.clone();
        let online = model.connection == Some(Connection::Online);
        use_effect_with((token.clone(), online), move |(token, online)| {
            if token.is_some() && *online {
                ctx.load_sessions(1);
                ctx.load_models();
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
    // asked of the server (a link to an older session).
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
                    ctx.show_from_server(*id);
                }
                (Some(_), None) => {}
            }
        });
    }
    // A rate limit's wait ends by itself.
    {
        let ctx = ctx.clone();
        let until = model.blocked.as_ref().and_then(|b| b.until_ms);
        use_effect_with(until, move |until| {
            let timer = until.map(|until| {
                let wait = (until - js_sys::Date::now()).max(0.0) as u32 + 50;
                gloo_timers::callback::Timeout::new(wait, move || ctx.dispatch(Action::Unblock))
            });
            move || drop(timer)
        });
    }
    // Ctrl+K (Cmd+K on a Mac) opens the search box anywhere once logged in.
    {
        let ctx = ctx.clone();
        use_effect_with(token.is_some(), move |logged_in| {
            let listener = logged_in.then(|| {
                let on_key = Closure::<dyn Fn(KeyboardEvent)>::new(move |e: KeyboardEvent| {
                    if (e.ctrl_key() || e.meta_key()) && !e.alt_key() && e.key().eq_ignore_ascii_case("k") {
                        e.prevent_default();
                        ctx.dispatch(Action::Search(true));
                    }
                });
                let document = web_sys::window().and_then(|w| w.document());
                if let Some(document) = &document {
                    let _ = document.add_event_listener_with_callback("keydown", on_key.as_ref().unchecked_ref());
                }
                (document, on_key)
            });
            move || {
                if let Some((Some(document), on_key)) = listener {
                    let _ = document.remove_event_listener_with_callback("keydown", on_key.as_ref().unchecked_ref());
                }
            }
        });
    }
    // A logout notice from the connection (token expired) also forgets the token.
    {
        let logged_out = model.auth.is_none() && model.notice.is_some();
        use_effect_with(logged_out, |logged_out| {
            if *logged_out {
                storage::clear_auth();
                storage::clear_share_urls();
            }
        });
    }

    let body = match &model.auth {
        None => html! { <Login notice={model.notice.clone()} /> },
        Some((user, _)) => {
            let chat = model.chat.clone().map(Rc::new);
            html! {
                <div class={classes!("layout", model.menu_open.then_some("menu-open"))}>
                    <Sidebar sessions={model.sessions.clone()} total={model.sessions_total} pages={model.sessions_pages}
                        open={model.chat.as_ref().map(|c| c.session.id)} connection={model.connection.clone()}
                        quota={model.quota.clone()} username={user.username.clone()} />
                    <ChatView {chat} menu_open={model.menu_open} blocked={model.blocked.clone()}
                        online={model.connection == Some(Connection::Online)} returned={model.returned.clone()}
                        models={model.models.clone()} />
                    if model.search_open {
                        <SearchBox />
                    }
                </div>
            }
        }
    };
    html! {
        <ContextProvider<Ctx> context={ctx}>
            if let Some(info) = model.model.clone().filter(|m| m.mock) {
                <MockBanner name={info.name} />
            }
            { body }
            <Toasts toasts={model.toasts.clone()} />
        </ContextProvider<Ctx>>
    }
}
