//! The open session: its messages (older ones loaded as the top comes into view), the reply
//! streaming in, Stop (or Esc), regenerate, edit, the versions a message replaced, and the
//! composer. A new chat (no session yet) is only the composer.

use std::collections::HashMap;
use std::rc::Rc;

use relay_protocol::{Message, MessageStatus, ModelList, Role};
use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::Element;
use yew::prelude::*;

use super::chat_settings::ChatSettings;
use super::composer::Composer;
use super::export_menu::ExportMenu;
use super::icons::{self, Icon};
use super::load_more::LoadMore;
use super::message::{MessageView, VersionPicker};
use super::share_menu::ShareMenu;
use crate::ctx::Ctx;
use crate::effects::copy_with_feedback;
use crate::state::{Action, Blocked, Chat, InFlight};
use crate::versions::{self, Slot};

/// How close to the bottom counts as "at the bottom" (the view follows new text there).
const STICKY_PX: i32 = 48;

/// Props of [`ChatView`].
#[derive(Properties, PartialEq)]
pub struct ChatProps {
    /// The open session, if any.
    pub chat: Option<Rc<Chat>>,
    /// Whether the session list is open over the chat (phone width).
    pub menu_open: bool,
    /// Why sending is off, if it is.
    pub blocked: Option<Blocked>,
    /// Whether the connection is up.
    pub online: bool,
    /// A send the server refused, to take back.
    pub returned: Option<InFlight>,
    /// The models a session may use.
    pub models: Option<ModelList>,
}

/// The ratings given in a tab, by reply.
#[derive(Default, PartialEq)]
struct Ratings(HashMap<Uuid, i8>);

impl Reducible for Ratings {
    type Action = (Uuid, i8);

    fn reduce(self: Rc<Self>, (id, rating): (Uuid, i8)) -> Rc<Self> {
        let mut ratings = self.0.clone();
        ratings.insert(id, rating);
        Rc::new(Ratings(ratings))
    }
}

/// The longest reply read out whole when it completes; a longer one is read up to here.
const ANNOUNCED_CHARS: usize = 600;

/// What a screen reader hears when a reply completes: its words without markdown syntax,
/// or their start and where the rest is. The live region is kept short because the page
/// lays its text out like any other (a whole long reply there cost a long task), and
/// nobody wants pages of text read out unasked.
fn announcement(reply: &str) -> String {
    match crate::markdown::plain_text(reply, ANNOUNCED_CHARS) {
        (text, false) => text,
        (text, true) => format!("{text}… The reply continues in the conversation."),
    }
}

/// The chat view.
#[function_component(ChatView)]
pub fn chat_view(props: &ChatProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let list = use_node_ref();
    let stick = use_mut_ref(|| true);
    // The list's scroll position at its last scroll event, to tell the reader scrolling up.
    let last_top = use_mut_ref(|| 0);
    // The list's height before older messages were put above, to keep the view still.
    let height_before_older = use_mut_ref(|| None::<i32>);
    let editing = use_state(|| None::<Uuid>);
    // The version shown of each message that replaced others (by the live message's id);
    // the live one when not chosen.
    let shown_versions = use_state(HashMap::<Uuid, usize>::new);
    // The ratings given in this tab, by reply (a reducer: answers that arrive together
    // each add to the map as it is then).
    let ratings = use_reducer(Ratings::default);
    let chat = props.chat.clone();

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
                announced.set(announcement(text));
            }
            *before.borrow_mut() = *running;
        });
    }
    let announcer =
        html! { <div class="sr-only" id="announcer" role="status" aria-live="polite">{ (*announced).clone() }</div> };
    let streaming_id = chat.as_ref().and_then(|c| c.generating.as_ref()).map(|g| g.message_id);
    let count = chat.as_ref().map_or(0, |c| c.messages.len());
    let first = chat.as_ref().and_then(|c| c.messages.first().map(|m| m.id));
    // The session whose view has been placed at its end: only then may older messages load
    // as the top comes into view (before, the top is in view only because nothing is placed).
    let placed = use_state(|| None::<Uuid>);
    let loaded = chat.as_ref().filter(|c| c.loaded).map(|c| c.session.id);
    {
        let (list, stick, last_top, height_before_older, placed) =
            (list.clone(), stick.clone(), last_top.clone(), height_before_older.clone(), placed.clone());
        use_effect_with((count, streaming_id, first, loaded), move |&(_, _, _, loaded)| {
            // A session just opened starts at its end.
            if loaded.is_some() && *placed != loaded {
                *stick.borrow_mut() = true;
                height_before_older.borrow_mut().take();
            }
            if let Some(el) = list.cast::<Element>() {
                if let Some(before) = height_before_older.borrow_mut().take() {
                    el.set_scroll_top(el.scroll_height() - before + el.scroll_top());
                } else if *stick.borrow() {
                    el.set_scroll_top(el.scroll_height());
                }
                *last_top.borrow_mut() = el.scroll_top();
            }
            if loaded.is_some() && *placed != loaded {
                placed.set(loaded);
            }
        });
    }
    // While a reply streams in, the view follows it when it was at the end. A ResizeObserver
    // is told after the frame's layout, so following costs no layout of its own; reading the
    // list's height as each piece is drawn forced one (the reply's whole growth, in the
    // script's task). Where the view was put is noted, so that only a move up from there
    // counts as the reader leaving the end. The reply is not drawn while an older version
    // of an earlier message is shown: the observer is set again when the choice changes.
    {
        let (list, stick, last_top) = (list.clone(), stick.clone(), last_top.clone());
        let versions_shown = (*shown_versions).clone();
        use_effect_with((streaming_id, versions_shown), move |(streaming_id, _)| {
            let observer = streaming_id.and_then(|_| {
                let el = list.cast::<Element>()?;
                let reply = el.query_selector("#streaming").ok().flatten()?;
                let follow = Closure::<dyn Fn()>::new(move || {
                    if *stick.borrow() {
                        el.set_scroll_top(el.scroll_height());
                        *last_top.borrow_mut() = el.scroll_top();
                    }
                });
                let observer = web_sys::ResizeObserver::new(follow.as_ref().unchecked_ref()).ok()?;
                observer.observe(&reply);
                Some((observer, follow))
            });
            move || {
                if let Some((observer, _follow)) = observer {
                    observer.disconnect();
                }
            }
        });
    }
    // A search result's message: brought into view, marked and focused once loaded; older
    // messages load until it is (the snapshot holds the latest 100).
    {
        let (ctx, list, stick, asked) = (ctx.clone(), list.clone(), stick.clone(), use_mut_ref(|| None::<Uuid>));
        let focus = chat.as_ref().and_then(|c| c.focus.filter(|_| c.loaded && *placed == Some(c.session.id)));
        let older = chat.as_ref().filter(|c| c.has_older).and_then(|c| Some((c.session.id, c.messages.first()?.id)));
        use_effect_with((focus, first, count), move |(focus, _, _)| {
            let Some(message_id) = *focus else { return };
            let selector = format!("article[data-id=\"{message_id}\"]");
            let found = list.cast::<Element>().and_then(|l| l.query_selector(&selector).ok().flatten());
            match (found, older) {
                (Some(article), _) => {
                    *stick.borrow_mut() = false;
                    let options = web_sys::ScrollIntoViewOptions::new();
                    options.set_block(web_sys::ScrollLogicalPosition::Center);
                    article.scroll_into_view_with_scroll_into_view_options(&options);
                    let _ = article.class_list().add_1("found");
                    let _ = article.set_attribute("tabindex", "-1");
                    if let Some(article) = article.dyn_ref::<web_sys::HtmlElement>() {
                        let _ = article.focus_with_options(&{
                            let o = web_sys::FocusOptions::new();
                            o.set_prevent_scroll(true);
                            o
                        });
                    }
                    ctx.dispatch(Action::Focused);
                }
                (None, Some((session_id, oldest))) => {
                    if *asked.borrow() != Some(oldest) {
                        *asked.borrow_mut() = Some(oldest);
                        ctx.load_older(session_id, oldest);
                    }
                }
                // Not in the session any more (edited away since it was found).
                (None, None) => ctx.dispatch(Action::Focused),
            }
        });
    }
    let menu_open = props.menu_open;
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
                        ctx.dispatch(Action::Menu(false));
                    } else if let Some(session_id) = streaming_in {
                        ctx.stop(session_id);
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
        Callback::from(move |_| ctx.dispatch(Action::Menu(!menu_open)))
    };
    let close_menu = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.dispatch(Action::Menu(false)))
    };
    // At phone width the list slides over the chat; a tap beside it closes it.
    let backdrop = menu_open.then(|| html! { <div class="backdrop" id="backdrop" onclick={close_menu}></div> });
    let menu_button = html! {
        <button class="icon menu" aria-label="Chats" title="Chats" aria-expanded={menu_open.to_string()} onclick={toggle_menu}>
            { icons::show(Icon::Menu) }
        </button>
    };
    let body_class = classes!("chat", menu_open.then_some("menu-open"));
    let Some(chat) = chat else {
        return html! {
            <main class={body_class}>
                { backdrop }
                <header class="chat-head">{ menu_button }</header>
                { announcer }
                <div class="empty" id="new-chat-hint">
                    <h1>{ "What can I help with?" }</h1>
                    <p>{ "Your first message starts a new chat." }</p>
                </div>
                <Composer key="new" session_id={None::<Uuid>} blocked={props.blocked.clone()} online={props.online}
                    returned={props.returned.clone()} />
            </main>
        };
    };
    let session_id = chat.session.id;

    // The view follows the reply again once it is back at the end, and stops when the
    // reader scrolls up; a scroll that reads the end as farther away only because the reply
    // grew since the view was put there (the follower moves it after layout) changes nothing.
    let onscroll = {
        let (stick, last_top) = (stick.clone(), last_top.clone());
        Callback::from(move |event: Event| {
            let Some(el) = event.target_dyn_into::<Element>() else { return };
            let top = el.scroll_top();
            let went_up = top < std::mem::replace(&mut *last_top.borrow_mut(), top);
            if top + el.client_height() >= el.scroll_height() - STICKY_PX {
                *stick.borrow_mut() = true;
            } else if went_up {
                *stick.borrow_mut() = false;
            }
        })
    };
    let oldest = chat.messages.first().map(|m| m.id);
    let load_older = {
        let (ctx, list, height_before_older) = (ctx.clone(), list.clone(), height_before_older.clone());
        Callback::from(move |()| {
            let (Some(oldest), Some(el)) = (oldest, list.cast::<Element>()) else { return };
            *height_before_older.borrow_mut() = Some(el.scroll_height());
            ctx.load_older(session_id, oldest);
        })
    };
    // Code blocks' copy buttons are in the rendered markdown: one handler for all.
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

    let settled = chat.generating.is_none();
    // The reply streaming in is shown as the message it will be stored as (same key), so
    // its blocks stay on the page when it lands.
    let streaming = chat.generating.as_ref().map(|g| {
        Rc::new(Message {
            id: g.message_id,
            session_id,
            role: Role::Assistant,
            content: g.content.clone(),
            token_count: None,
            status: MessageStatus::Generating,
            created_at: chat.session.updated_at,
            superseded: false,
            model: None,
            replaced_by: None,
        })
    });
    let mut messages: Vec<Rc<Message>> =
        chat.messages.iter().filter(|m| Some(m.id) != streaming.as_ref().map(|s| s.id)).cloned().collect();
    messages.extend(streaming.clone());
    let slots = versions::slots(&messages);
    let last_reply = slots.last().map(Slot::live).filter(|m| m.role == Role::Assistant).map(|m| m.id);

    let start_edit = {
        let editing = editing.clone();
        Callback::from(move |id: Uuid| editing.set(Some(id)))
    };
    let regenerate = {
        let ctx = ctx.clone();
        Callback::from(move |()| ctx.regenerate(session_id))
    };
    let stop = {
        let ctx = ctx.clone();
        Callback::from(move |_| ctx.stop(session_id))
    };
    let edit = (*editing).and_then(|id| chat.messages.iter().find(|m| m.id == id)).map(|m| (m.id, m.content.clone()));

    // Each slot shows its chosen version; an older version of a message hides what came
    // after it (that was the answer to the newer one).
    let mut views = Vec::new();
    for slot in &slots {
        let live = slot.live().clone();
        let count = slot.versions.len();
        let shown = shown_versions.get(&live.id).copied().filter(|&v| v < count).unwrap_or(count - 1);
        let picker = (count > 1).then(|| {
            let (shown_versions, id) = (shown_versions.clone(), live.id);
            let pick = Callback::from(move |v: usize| {
                let mut chosen = (*shown_versions).clone();
                chosen.insert(id, v);
                shown_versions.set(chosen);
            });
            VersionPicker { shown, count, pick }
        });
        let old = shown + 1 < count;
        for (i, message) in slot.versions[shown].iter().enumerate() {
            let is_streaming = streaming.as_ref().is_some_and(|s| s.id == message.id);
            // Any question of the live conversation can be edited: the server replaces it and
            // everything after it.
            let on_edit = (!old && settled && message.role == Role::User).then(|| {
                let (start_edit, id) = (start_edit.clone(), message.id);
                Callback::from(move |()| start_edit.emit(id))
            });
            let on_regenerate = (!old && settled && Some(message.id) == last_reply).then(|| regenerate.clone());
            let versions = if i == 0 { picker.clone() } else { None };
            let rating = ratings.0.get(&message.id).copied();
            let on_rate = (!is_streaming && message.role == Role::Assistant).then(|| {
                let (ctx, ratings, id) = (ctx.clone(), ratings.dispatcher(), message.id);
                Callback::from(move |rating: i8| {
                    let ratings = ratings.clone();
                    ctx.rate(session_id, id, rating, Callback::from(move |stored: i8| ratings.dispatch((id, stored))));
                })
            });
            views.push(html! {
                <MessageView key={message.id.to_string()} message={message.clone()} streaming={is_streaming}
                    {on_edit} {on_regenerate} {versions} {rating} {on_rate} />
            });
        }
        if old {
            break;
        }
    }

    // Every child of the list keyed, always: a list that is keyed only at times is rebuilt
    // whole by Yew each time it changes kind (every message drawn again).
    let mut items = Vec::with_capacity(views.len() + 2);
    if !chat.loaded {
        items.push(html! { <p class="loading" key="loading">{ "Loading…" }</p> });
    }
    if chat.has_older && *placed == Some(session_id) {
        let key = format!("older-{}", oldest.map(|id| id.to_string()).unwrap_or_default());
        items.push(html! { <LoadMore {key} id="older" label="Older messages" on_load={load_older} /> });
    }
    items.extend(views);
    html! {
        <main class={body_class}>
            { backdrop }
            { announcer }
            <header class="chat-head">
                { menu_button }
                <h1 id="chat-title">{ &chat.session.title }</h1>
                <ChatSettings session={chat.session.clone()} models={props.models.clone()} />
                <ShareMenu {session_id} share={chat.share.clone()} />
                <ExportMenu {session_id} />
            </header>
            <div class="messages" id="messages" ref={list} {onscroll} onclick={on_copy}>{ for items }</div>
            <div class="actions">
                if !settled {
                    <button id="stop" class="danger" onclick={stop} title="Stop (Esc)">{ icons::show(Icon::Stop) }{ "Stop" }</button>
                }
            </div>
            <Composer key={session_id.to_string()} session_id={Some(session_id)} editing={edit}
                on_done_editing={ let editing = editing.clone(); Callback::from(move |_| editing.set(None)) }
                blocked={props.blocked.clone()} online={props.online} returned={props.returned.clone()} />
        </main>
    }
}
