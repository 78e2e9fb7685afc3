//! The sidebar: new chat, the session list (most recent first, more on scroll, rename,
//! delete with confirmation, kept live by other tabs), the connection status, the quota,
//! and logout.

use relay_protocol::Session;
use uuid::Uuid;
use wasm_bindgen::JsCast;
use web_sys::HtmlInputElement;
use yew::prelude::*;

use super::app::Ctx;
use crate::api;
use crate::state::{Action, Connection};
use crate::theme::{self, Theme};

/// The sidebar.
#[function_component(Sidebar)]
pub fn sidebar() -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let model = &ctx.model;
    // A new chat is only a composer until its first message: no empty session is stored.
    // The composer takes the focus once it shows.
    let new_chat = {
        let ctx = ctx.clone();
        Callback::from(move |_| {
            ctx.close();
            gloo_timers::callback::Timeout::new(0, || {
                let composer =
                    web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("composer"));
                if let Some(composer) = composer.and_then(|c| c.dyn_into::<web_sys::HtmlElement>().ok()) {
                    let _ = composer.focus();
                }
            })
            .forget();
        })
    };
    let more = model.sessions.len() < model.sessions_total as usize;
    let onscroll = {
        let ctx = ctx.clone();
        let next = model.sessions_pages + 1;
        Callback::from(move |event: Event| {
            let Some(list) = event.target_dyn_into::<web_sys::Element>() else { return };
            if more && list.scroll_top() + list.client_height() >= list.scroll_height() - 40 {
                ctx.load_sessions(next);
            }
        })
    };
    let logout = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.logout(None))
    };
    let open = model.chat.as_ref().map(|c| c.session.id);
    // While offline, the countdown to the next attempt ticks every second.
    let offline = matches!(model.connection, Some(Connection::Offline { .. }));
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
    let (status_class, status_text) = match &model.connection {
        Some(Connection::Online) => ("online", "Online".to_string()),
        Some(Connection::Connecting) | None => ("connecting", "Connecting…".to_string()),
        Some(Connection::Offline { retry_at_ms }) => {
            let left = ((retry_at_ms - js_sys::Date::now()) / 1000.0).ceil().max(0.0);
            ("offline", format!("Offline — retrying in {left}s"))
        }
    };
    let quota = model.quota.as_ref().map(|q| match q.remaining {
        Some(left) => format!("{left} messages left today"),
        None => "No daily limit".to_string(),
    });
    let user = model.auth.as_ref().map(|(u, _)| u.username.clone()).unwrap_or_default();
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
    html! {
        <nav class="sidebar" id="sidebar">
            <div class="sidebar-head">
                <button id="new-chat" class="primary" onclick={new_chat}>{ "+ New chat" }</button>
                <span id="status" role="status" aria-live="polite" class={classes!("status", status_class)} title={status_text.clone()}>{ status_text }</span>
                if offline {
                    <button id="retry-now" class="link" onclick={retry_now}>{ "Retry now" }</button>
                }
            </div>
            <ul class="sessions" id="sessions" {onscroll}>
                { for model.sessions.iter().map(|s| html! {
                    <SessionItem key={s.id.to_string()} session={s.clone()} active={open == Some(s.id)} />
                }) }
                if more {
                    <li class="more">{ "…" }</li>
                }
            </ul>
            <div class="sidebar-foot">
                if let Some(quota) = quota {
                    <span id="quota" class="quota">{ quota }</span>
                }
                <span class="user">{ user }</span>
                <select id="theme" class="theme" aria-label="Colour theme" onchange={on_theme}>
                    { for Theme::ALL.into_iter().map(|t| html! {
                        <option value={t.name()} selected={*chosen == t}>{ t.label() }</option>
                    }) }
                </select>
                <button id="logout" class="link" onclick={logout}>{ "Log out" }</button>
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
        Callback::from(move |_| ctx.open(session.clone()))
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
            let (ctx, Some(token)) = (ctx.clone(), ctx.token()) else { return };
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(e) = api::rename_session(&token, id, title.trim()).await {
                    ctx.model.dispatch(Action::Toast(e.message, None));
                }
            });
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
            let (ctx, Some(token)) = (ctx.clone(), ctx.token()) else { return };
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(e) = api::delete_session(&token, id).await {
                    ctx.model.dispatch(Action::Toast(e.message, None));
                }
            });
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
                <button class="icon rename-button" title="Rename" aria-label="Rename chat" onclick={start_rename}>{ "✎" }</button>
                <button class="icon delete-button" title="Delete" aria-label="Delete chat" onclick={ask_delete}>{ "✕" }</button>
            }
        </li>
    }
}
