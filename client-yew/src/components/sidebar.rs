//! The sidebar: new chat, the session list (most recent first, more as the end comes into
//! view, rename, delete with confirmation, kept live by other tabs), the connection status,
//! the quota, the theme and logout.

use std::rc::Rc;

use relay_protocol::{Quota, Session};
use uuid::Uuid;
use web_sys::HtmlInputElement;
use yew::prelude::*;

use super::icons::{self, Icon};
use super::load_more::LoadMore;
use crate::ctx::Ctx;
use crate::effects::focus_soon;
use crate::state::{Action, Connection};
use crate::theme::{self, Theme};

/// What the sidebar shows.
#[derive(Properties, PartialEq)]
pub struct SidebarProps {
    /// The sessions loaded so far, most recently active first.
    pub sessions: Rc<Vec<Session>>,
    /// How many the user has in all.
    pub total: u64,
    /// How many pages are loaded.
    pub pages: u32,
    /// The open session.
    pub open: Option<Uuid>,
    /// The connection's state.
    pub connection: Option<Connection>,
    /// Today's quota.
    pub quota: Option<Quota>,
    /// Who is logged in.
    pub username: String,
}

/// The sidebar.
#[function_component(Sidebar)]
pub fn sidebar(props: &SidebarProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    // A new chat is only a composer until its first message: no empty session is stored.
    // The composer takes the focus once it shows.
    let new_chat = {
        let ctx = ctx.clone();
        Callback::from(move |_| {
            ctx.close();
            focus_soon("composer");
        })
    };
    let more = props.sessions.len() < props.total as usize;
    let load_more = {
        let ctx = ctx.clone();
        let next = props.pages + 1;
        Callback::from(move |_| ctx.load_sessions(next))
    };
    let logout = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.logout(None))
    };
    let open = props.open;
    // While offline, the countdown to the next attempt ticks every second.
    let offline = matches!(props.connection, Some(Connection::Offline { .. }));
    {
        let update = use_force_update();
        use_effect_with(offline, move |&offline| {
            let ticking = offline.then(|| gloo_timers::callback::Interval::new(1000, move || update.force_update()));
            move || drop(ticking)
        });
    }
    let retry_now = {
        let ctx = ctx.clone();
        Callback::from(move |_| {
            if let Some(socket) = &ctx.socket {
                socket.retry_now();
            }
        })
    };
    let (status_class, status_text) = match &props.connection {
        Some(Connection::Online) => ("online", "Online".to_string()),
        Some(Connection::Connecting) | None => ("connecting", "Connecting…".to_string()),
        Some(Connection::Offline { retry_at_ms }) => {
            let left = ((retry_at_ms - js_sys::Date::now()) / 1000.0).ceil().max(0.0);
            ("offline", format!("Offline — retrying in {left}s"))
        }
    };
    let quota = props.quota.as_ref().map(|q| match q.remaining {
        Some(left) => format!("{left} messages left today"),
        None => "No daily limit".to_string(),
    });
    let chosen = use_state(theme::current);
    let on_theme = {
        let chosen = chosen.clone();
        Callback::from(move |event: Event| {
            let Some(select) = event.target_dyn_into::<web_sys::HtmlSelectElement>() else { return };
            let theme = Theme::from_name(&select.value());
            theme::choose(theme);
            chosen.set(theme);
        })
    };
    let open_search = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.dispatch(Action::Search(true)))
    };
    html! {
        <nav class="sidebar" id="sidebar">
            <div class="sidebar-head">
                <button id="new-chat" class="primary" onclick={new_chat}>{ icons::show(Icon::Plus) }{ "New chat" }</button>
                <button id="open-search" class="icon" type="button" aria-label="Search your chats" title="Search (Ctrl+K)"
                    aria-keyshortcuts="Control+K Meta+K" onclick={open_search}>{ icons::show(Icon::Search) }</button>
                <span id="status" role="status" aria-live="polite" class={classes!("status", status_class)} title={status_text.clone()}>{ status_text }</span>
                if offline {
                    <button id="retry-now" class="link" onclick={retry_now}>{ "Retry now" }</button>
                }
            </div>
            <ul class="sessions" id="sessions">
                { for props.sessions.iter().map(|s| html! {
                    <SessionItem key={s.id.to_string()} session={s.clone()} active={open == Some(s.id)} />
                }) }
                if more {
                    <li class="more"><LoadMore id="more-sessions" label="More chats" key={props.pages} on_load={load_more} /></li>
                }
            </ul>
            <div class="sidebar-foot">
                if let Some(quota) = quota {
                    <span id="quota" class="quota">{ quota }</span>
                }
                <span class="user">{ &props.username }</span>
                <select id="theme" class="theme" aria-label="Colour theme" onchange={on_theme}>
                    { for Theme::ALL.into_iter().map(|t| html! {
                        <option value={t.name()} selected={*chosen == t}>{ t.label() }</option>
                    }) }
                </select>
                <button id="logout" class="link" onclick={logout}>{ icons::show(Icon::Logout) }{ "Log out" }</button>
            </div>
        </nav>
    }
}

/// Props of one session in the list.
#[derive(Properties, PartialEq)]
struct ItemProps {
    session: Session,
    active: bool,
}

/// One session: open on click; rename in place; delete after a second, confirming click.
#[function_component(SessionItem)]
fn session_item(props: &ItemProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let renaming = use_state(|| false);
    let confirming = use_state(|| false);
    let input = use_node_ref();
    let id: Uuid = props.session.id;
    // Renaming starts in the field, its text selected (typing replaces it).
    {
        let input = input.clone();
        use_effect_with(*renaming, move |&renaming| {
            if let (true, Some(field)) = (renaming, input.cast::<HtmlInputElement>()) {
                let _ = field.focus();
                field.select();
            }
        });
    }

    let open = {
        let (ctx, session) = (ctx.clone(), props.session.clone());
        Callback::from(move |_| {
            ctx.open(session.clone());
            focus_soon("composer");
        })
    };
    let start_rename = {
        let renaming = renaming.clone();
        Callback::from(move |e: MouseEvent| {
            e.stop_propagation();
            renaming.set(true);
        })
    };
    let finish_rename = {
        let (ctx, renaming, input) = (ctx.clone(), renaming.clone(), input.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let title = input.cast::<HtmlInputElement>().map(|i| i.value()).unwrap_or_default();
            renaming.set(false);
            ctx.rename(id, title);
        })
    };
    let ask_delete = {
        let confirming = confirming.clone();
        Callback::from(move |e: MouseEvent| {
            e.stop_propagation();
            confirming.set(true);
        })
    };
    let cancel_delete = {
        let confirming = confirming.clone();
        Callback::from(move |e: MouseEvent| {
            e.stop_propagation();
            confirming.set(false);
        })
    };
    let delete = {
        let (ctx, confirming) = (ctx.clone(), confirming.clone());
        Callback::from(move |e: MouseEvent| {
            e.stop_propagation();
            confirming.set(false);
            ctx.delete(id);
        })
    };
    let class = classes!("session", props.active.then_some("active"));
    html! {
        <li {class} data-id={id.to_string()} onclick={open}>
            if *renaming {
                <form class="rename" onsubmit={finish_rename} onclick={|e: MouseEvent| e.stop_propagation()}>
                    <input ref={input} class="rename-input" value={props.session.title.clone()} maxlength="255" />
                    <button type="submit">{ "Save" }</button>
                </form>
            } else if *confirming {
                <span class="confirm">{ "Delete this chat?" }</span>
                <button class="danger confirm-delete" onclick={delete}>{ "Delete" }</button>
                <button class="link" onclick={cancel_delete}>{ "Cancel" }</button>
            } else {
                // A link, so the keyboard reaches it and a new tab can open it; here the
                // click opens the session in place (the list item's handler).
                <a class="title" href={format!("/c/{id}")} onclick={|e: MouseEvent| e.prevent_default()}>
                    { &props.session.title }
                </a>
                <button class="icon rename-button" title="Rename" aria-label="Rename chat" onclick={start_rename}>{ icons::show(Icon::Pencil) }</button>
                <button class="icon delete-button" title="Delete" aria-label="Delete chat" onclick={ask_delete}>{ icons::show(Icon::Trash) }</button>
            }
        </li>
    }
}
