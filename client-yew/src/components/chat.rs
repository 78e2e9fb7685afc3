//! The open session: its messages (markdown, code highlighted, copyable), the reply
//! streaming in with a typing indicator, Stop (or Esc), regenerate and edit, and the composer.

use relay_protocol::{ClientFrame, Message, MessageStatus, Role};
use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{Element, HtmlTextAreaElement};
use yew::prelude::*;

use super::app::Ctx;
use crate::state::{Action, InFlight, Retry};
use crate::{api, markdown, storage};

/// How close to the bottom counts as "at the bottom" (the view follows new text there).
const STICKY_PX: i32 = 48;
/// How long a code block's copy button says how the copy went.
const COPIED_SHOWN_MS: u32 = 2000;

/// The chat view.
#[function_component(ChatView)]
pub fn chat_view() -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let list = use_node_ref();
    let stick = use_mut_ref(|| true);
    // The list's height before older messages were put above, to keep the view still.
    let height_before_older = use_mut_ref(|| None::<i32>);
    let loading_older = use_state(|| false);
    let editing = use_state(|| None::<Uuid>);

    let chat = ctx.model.chat.clone();
    // A reply is announced to screen readers once, when it is complete (not every token).
    let announced = use_state(String::new);
    {
        let (announced, before) = (announced.clone(), use_mut_ref(|| None::<Uuid>));
        let running = chat.as_ref().and_then(|c| c.generating.as_ref()).map(|g| g.message_id);
        let finished = before.borrow().and_then(|id| {
            chat.as_ref().and_then(|c| c.messages.iter().find(|m| m.id == id)).map(|m| m.content.clone())
        });
        use_effect_with((running, finished), move |(running, finished)| {
            if running.is_none()
                && let Some(text) = finished
            {
                announced.set(text.clone());
            }
            *before.borrow_mut() = *running;
        });
    }
    let announcer =
        html! { <div class="sr-only" id="announcer" role="status" aria-live="polite">{ (*announced).clone() }</div> };
    let generating_len = chat.as_ref().and_then(|c| c.generating.as_ref()).map_or(0, |g| g.content.len());
    let count = chat.as_ref().map_or(0, |c| c.messages.len());
    let first = chat.as_ref().and_then(|c| c.messages.first().map(|m| m.id));
    {
        let (list, stick, height_before_older) = (list.clone(), stick.clone(), height_before_older.clone());
        use_effect_with((count, generating_len, first), move |_| {
            if let Some(el) = list.cast::<Element>() {
                if let Some(before) = height_before_older.borrow_mut().take() {
                    el.set_scroll_top(el.scroll_height() - before + el.scroll_top());
                } else if *stick.borrow() {
                    el.set_scroll_top(el.scroll_height());
                }
            }
        });
    }
    let menu_open = ctx.model.menu_open;
    let streaming_in = chat.as_ref().filter(|c| c.generating.is_some()).map(|c| c.session.id);
    // Esc anywhere in the page closes the session list when it is open over the chat (phone
    // width), else stops the reply streaming in (as the Stop button does).
    {
        let ctx = ctx.clone();
        use_effect_with((streaming_in, menu_open), move |&(streaming_in, menu_open)| {
            let listener = (menu_open || streaming_in.is_some()).then(|| {
                let on_key = Closure::<dyn Fn(KeyboardEvent)>::new(move |e: KeyboardEvent| {
                    if e.key() != "Escape" || e.default_prevented() {
                        return;
                    }
                    if menu_open {
                        ctx.model.dispatch(Action::Menu(false));
                    } else if let (Some(session_id), Some(socket)) = (streaming_in, &ctx.socket) {
                        socket.send(&ClientFrame::Stop { id: None, session_id });
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
    let toggle_menu = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.model.dispatch(Action::Menu(!menu_open)))
    };
    let close_menu = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.model.dispatch(Action::Menu(false)))
    };
    // At phone width the list slides over the chat; a tap beside it closes it.
    let backdrop = menu_open.then(|| html! { <div class="backdrop" id="backdrop" onclick={close_menu}></div> });
    let body_class = classes!("chat", menu_open.then_some("menu-open"));
    let Some(chat) = chat else {
        return html! {
            <section class={body_class}>
                { backdrop }
                <header class="chat-head"><button class="icon menu" onclick={toggle_menu}>{ "☰" }</button></header>
                { announcer }
                <p class="empty" id="new-chat-hint">{ "A new chat: your first message starts it." }</p>
                <Composer key="new" session_id={None::<Uuid>} editing={None::<Uuid>} edit_text={None::<String>}
                    on_done_editing={Callback::noop()} />
            </section>
        };
    };
    let session_id = chat.session.id;

    let onscroll = {
        let (ctx, stick, loading_older, height_before_older) =
            (ctx.clone(), stick.clone(), loading_older.clone(), height_before_older.clone());
        let oldest = chat.messages.first().map(|m| m.id);
        let has_older = chat.has_older;
        Callback::from(move |event: Event| {
            let Some(el) = event.target_dyn_into::<Element>() else { return };
            *stick.borrow_mut() = el.scroll_top() + el.client_height() >= el.scroll_height() - STICKY_PX;
            if el.scroll_top() < 40 && has_older && !*loading_older {
                let (Some(oldest), Some(token)) = (oldest, ctx.token()) else { return };
                loading_older.set(true);
                *height_before_older.borrow_mut() = Some(el.scroll_height());
                let (model, loading_older) = (ctx.model.clone(), loading_older.clone());
                wasm_bindgen_futures::spawn_local(async move {
                    match api::older_messages(&token, session_id, oldest).await {
                        Ok(page) => model.dispatch(Action::Older {
                            session_id,
                            messages: page.messages,
                            has_more: page.has_more,
                        }),
                        Err(e) => model.dispatch(Action::Toast(e.message, None)),
                    }
                    loading_older.set(false);
                });
            }
        })
    };
    let on_copy = Callback::from(|event: MouseEvent| {
        let Some(target) = event.target_dyn_into::<Element>() else { return };
        if !target.class_list().contains("copy") {
            return;
        }
        let code = target.closest(".code").ok().flatten().and_then(|block| block.query_selector("code").ok().flatten());
        if let Some(code) = code {
            copy_with_feedback(&code.text_content().unwrap_or_default(), target);
        }
    });

    let live: Vec<&Message> = chat.messages.iter().filter(|m| !m.superseded).collect();
    let last_user = live.iter().rev().find(|m| m.role == Role::User).map(|m| m.id);
    let settled = chat.generating.is_none();
    let can_regenerate = settled && live.last().is_some();
    let stop = {
        let ctx = ctx.clone();
        Callback::from(move |_| {
            if let Some(socket) = &ctx.socket {
                socket.send(&ClientFrame::Stop { id: None, session_id });
            }
        })
    };
    let regenerate = {
        let ctx = ctx.clone();
        Callback::from(move |_| {
            if let Some(socket) = &ctx.socket {
                let key = Some(crate::socket::Socket::new_key());
                socket.send(&ClientFrame::Regenerate {
                    id: Some(socket.request_id()),
                    session_id,
                    client_message_id: key,
                });
            }
        })
    };
    let start_edit = {
        let editing = editing.clone();
        Callback::from(move |id: Uuid| editing.set(Some(id)))
    };
    let edit_text = (*editing).and_then(|id| chat.messages.iter().find(|m| m.id == id)).map(|m| m.content.clone());

    html! {
        <section class={body_class}>
            { backdrop }
            { announcer }
            <header class="chat-head">
                <button class="icon menu" onclick={toggle_menu}>{ "☰" }</button>
                <h1 id="chat-title">{ &chat.session.title }</h1>
            </header>
            <div class="messages" id="messages" ref={list} {onscroll} onclick={on_copy}>
                if !chat.loaded {
                    <p class="loading">{ "Loading…" }</p>
                }
                { for live.iter().map(|m| {
                    let on_edit = (Some(m.id) == last_user && settled).then(|| {
                        let (start_edit, id) = (start_edit.clone(), m.id);
                        Callback::from(move |_| start_edit.emit(id))
                    });
                    html! { <MessageView key={m.id.to_string()} message={(*m).clone()} {on_edit} /> }
                }) }
                if let Some(generating) = &chat.generating {
                    <article class="message assistant streaming" id="streaming" data-id={generating.message_id.to_string()}>
                        <div class="content markdown">
                            { Html::from_html_unchecked(markdown::render(&generating.content, false).into()) }
                        </div>
                        <span class="typing" id="typing"><i></i><i></i><i></i></span>
                    </article>
                }
            </div>
            <div class="actions">
                if !settled {
                    <button id="stop" class="danger" onclick={stop}>{ "■ Stop" }</button>
                } else if can_regenerate {
                    <button id="regenerate" class="link" onclick={regenerate}>{ "↻ Regenerate" }</button>
                }
            </div>
            <Composer key={session_id.to_string()} session_id={Some(session_id)} editing={*editing} {edit_text}
                on_done_editing={ let editing = editing.clone(); Callback::from(move |_| editing.set(None)) } />
        </section>
    }
}

/// Props of one message.
#[derive(Properties, PartialEq)]
struct MessageProps {
    message: Message,
    /// Set on the last user message while nothing streams: it can be edited.
    on_edit: Option<Callback<()>>,
}

/// One stored message: the user's as text, the model's as markdown.
#[function_component(MessageView)]
fn message_view(props: &MessageProps) -> Html {
    let m = &props.message;
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::System => "system",
    };
    let badge = match m.status {
        MessageStatus::Cancelled => Some("stopped"),
        MessageStatus::Error => Some("failed"),
        MessageStatus::Generating => Some("interrupted"),
        MessageStatus::Complete => None,
    };
    let copy = {
        let text = m.content.clone();
        Callback::from(move |event: MouseEvent| {
            if let Some(button) = event.target_dyn_into::<Element>() {
                copy_with_feedback(&text, button);
            }
        })
    };
    let content = if m.role == Role::Assistant {
        html! { <div class="content markdown">{ Html::from_html_unchecked(markdown::render(&m.content, true).into()) }</div> }
    } else {
        html! { <div class="content text">{ &m.content }</div> }
    };
    html! {
        <article class={classes!("message", role)} data-id={m.id.to_string()}>
            { content }
            <footer>
                if let Some(badge) = badge {
                    <span class={classes!("badge", badge)}>{ badge }</span>
                }
                <button class="link copy-message" type="button" title="Copy the message" onclick={copy}>{ "Copy" }</button>
                if let Some(on_edit) = &props.on_edit {
                    <button class="link edit" onclick={ let on_edit = on_edit.clone(); Callback::from(move |_| on_edit.emit(())) }>
                        { "Edit" }
                    </button>
                }
            </footer>
        </article>
    }
}

/// Props of the composer.
#[derive(Properties, PartialEq)]
struct ComposerProps {
    /// The session it sends to; none for a new chat (its first send makes the session).
    session_id: Option<Uuid>,
    /// The message being edited, if any.
    editing: Option<Uuid>,
    /// Its text, to start from.
    edit_text: Option<String>,
    on_done_editing: Callback<()>,
}

/// The text box: Enter sends, Shift+Enter is a new line; the draft of each session is kept;
/// disabled with the reason when the user may not send.
#[function_component(Composer)]
fn composer(props: &ComposerProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    // A new chat keeps its draft under the nil id.
    let session_id = props.session_id.unwrap_or_default();
    let text = use_state(|| storage::load_draft(session_id));
    let area = use_node_ref();
    {
        let text = text.clone();
        use_effect_with(props.edit_text.clone(), move |edit| {
            if let Some(edit) = edit {
                text.set(edit.clone());
            }
        });
    }
    // A send the server refused comes back to the composer it left, unless the user has
    // started another message (then a toast offers to send it again).
    {
        let (ctx, text) = (ctx.clone(), text.clone());
        let returned = ctx.model.returned.clone().filter(|r| r.session_id == session_id);
        use_effect_with(returned, move |returned| {
            if let Some(returned) = returned {
                if text.trim().is_empty() {
                    storage::save_draft(session_id, &returned.content);
                    text.set(returned.content.clone());
                } else {
                    ctx.model.dispatch(Action::Toast(
                        "Your message was not sent.".into(),
                        Some(Retry::Send { session_id, content: returned.content.clone(), key: returned.key.clone() }),
                    ));
                }
                ctx.model.dispatch(Action::TookReturned);
            }
        });
    }
    let oninput = {
        let (text, editing) = (text.clone(), props.editing);
        Callback::from(move |e: InputEvent| {
            let Some(area) = e.target().and_then(|t| t.dyn_into::<HtmlTextAreaElement>().ok()) else { return };
            if editing.is_none() {
                storage::save_draft(session_id, &area.value());
            }
            text.set(area.value());
        })
    };
    let submit = {
        let (ctx, text, editing, done) = (ctx.clone(), text.clone(), props.editing, props.on_done_editing.clone());
        let new_chat = props.session_id.is_none();
        Callback::from(move |()| {
            let content = (*text).clone();
            if content.trim().is_empty() || !ctx.model.can_send() {
                return;
            }
            if new_chat {
                start_chat(ctx.clone(), text.clone(), content);
                return;
            }
            let Some(socket) = &ctx.socket else { return };
            let request_id = socket.request_id();
            let id = Some(request_id.clone());
            // Every send carries its own idempotency key, kept for a retry of it.
            let key = crate::socket::Socket::new_key();
            let client_message_id = Some(key.clone());
            let frame = match editing {
                Some(message_id) => {
                    ClientFrame::Edit { id, session_id, message_id, content: content.clone(), client_message_id }
                }
                None => {
                    let in_flight = InFlight { request_id, session_id, content: content.clone(), key: key.clone() };
                    ctx.model.dispatch(Action::Sending(in_flight));
                    ClientFrame::Send { id, session_id, content: content.clone(), client_message_id }
                }
            };
            if socket.send(&frame) {
                text.set(String::new());
                if editing.is_some() {
                    done.emit(());
                } else {
                    storage::save_draft(session_id, "");
                }
            } else {
                ctx.model.dispatch(Action::Toast(
                    "Not connected; your message was not sent.".into(),
                    Some(Retry::Send { session_id, content, key }),
                ));
            }
        })
    };
    let onkeydown = {
        let submit = submit.clone();
        Callback::from(move |e: KeyboardEvent| {
            if e.key() == "Enter" && !e.shift_key() && !e.is_composing() {
                e.prevent_default();
                submit.emit(());
            }
        })
    };
    let onsubmit = {
        let submit = submit.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            submit.emit(());
        })
    };
    let cancel = {
        let (done, text) = (props.on_done_editing.clone(), text.clone());
        Callback::from(move |_| {
            text.set(storage::load_draft(session_id));
            done.emit(());
        })
    };
    let blocked = ctx.model.blocked.clone();
    let offline = ctx.model.connection != Some(crate::state::Connection::Online);
    let disabled = blocked.is_some() || offline;
    // Ready to type as soon as it can be used (after login, on opening a session, on New
    // chat), unless the user is busy elsewhere on the page.
    {
        let area = area.clone();
        use_effect_with((props.session_id, disabled), move |&(_, disabled)| {
            let document = web_sys::window().and_then(|w| w.document());
            let idle = document.and_then(|d| d.active_element()).is_none_or(|e| e.tag_name() == "BODY");
            if let (false, true, Some(area)) = (disabled, idle, area.cast::<web_sys::HtmlElement>()) {
                let _ = area.focus();
            }
        });
    }
    let placeholder = match (&blocked, offline) {
        (Some(b), _) => b.reason.clone(),
        (None, true) => "Reconnecting…".to_string(),
        (None, false) => "Message (Enter to send, Shift+Enter for a new line)".to_string(),
    };
    html! {
        <form class={classes!("composer", props.editing.is_some().then_some("editing"))} {onsubmit}>
            if let Some(b) = &blocked {
                <p class="blocked" id="blocked">{ &b.reason }</p>
            }
            <textarea id="composer" ref={area} rows={composer_rows(&text).to_string()} value={(*text).clone()} {oninput} {onkeydown} {placeholder} {disabled} />
            <div class="composer-buttons">
                if props.editing.is_some() {
                    <button type="button" class="link" onclick={cancel}>{ "Cancel" }</button>
                    <button id="send" type="submit" class="primary" {disabled}>{ "Save & answer" }</button>
                } else {
                    <button id="send" type="submit" class="primary" {disabled}>{ "Send" }</button>
                }
            </div>
        </form>
    }
}

/// The first message of a new chat: the session is made (over REST), opened, and the
/// message sent to it; if the session cannot be made, the text stays in the composer.
fn start_chat(ctx: Ctx, text: UseStateHandle<String>, content: String) {
    let Some(token) = ctx.token() else { return };
    wasm_bindgen_futures::spawn_local(async move {
        let session = match api::create_session(&token).await {
            Ok(session) => session,
            Err(e) => {
                ctx.model.dispatch(Action::Toast(format!("The chat could not be started: {}", e.message), None));
                return;
            }
        };
        let session_id = session.id;
        ctx.model.dispatch(Action::Frame(relay_protocol::ServerFrame::SessionCreated {
            id: None,
            session: session.clone(),
        }));
        ctx.open(session);
        text.set(String::new());
        storage::save_draft(Uuid::nil(), "");
        let Some(socket) = &ctx.socket else { return };
        let request_id = socket.request_id();
        let key = crate::socket::Socket::new_key();
        let in_flight =
            InFlight { request_id: request_id.clone(), session_id, content: content.clone(), key: key.clone() };
        ctx.model.dispatch(Action::Sending(in_flight));
        let frame = ClientFrame::Send {
            id: Some(request_id),
            session_id,
            content: content.clone(),
            client_message_id: Some(key.clone()),
        };
        if !socket.send(&frame) {
            ctx.model.dispatch(Action::Toast(
                "Not connected; your message was not sent.".into(),
                Some(Retry::Send { session_id, content, key }),
            ));
        }
    });
}

/// Copies `text`; `button` then says how it went (the browser may refuse the clipboard) for
/// a moment, and offers to copy again.
fn copy_with_feedback(text: &str, button: Element) {
    let Some(window) = web_sys::window() else { return };
    let written = wasm_bindgen_futures::JsFuture::from(window.navigator().clipboard().write_text(text));
    wasm_bindgen_futures::spawn_local(async move {
        let copied = written.await.is_ok();
        button.set_text_content(Some(if copied { "Copied" } else { "Copy failed" }));
        gloo_timers::future::TimeoutFuture::new(COPIED_SHOWN_MS).await;
        button.set_text_content(Some("Copy"));
    });
}

/// The composer grows with its text, line by line, from 2 lines up to 8 (then it scrolls).
fn composer_rows(text: &str) -> usize {
    (text.split('\n').count()).clamp(2, 8)
}
