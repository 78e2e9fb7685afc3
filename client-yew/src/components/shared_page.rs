//! The page a share link opens (`/s/<token>`), for anyone, without logging in: the
//! conversation, read-only, followed live over the link's SSE stream (a reply shows as it
//! is written), until the owner ends the link. A stream the server refuses (too many
//! watching) is asked for again, less and less often, while the page shows the
//! conversation as it was.

use std::cell::RefCell;
use std::rc::Rc;

use relay_protocol::{Message, MessageStatus, Role, ServerFrame, ShareEnd, ShareEnded};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{EventSource, MessageEvent};
use yew::prelude::*;

use super::message::MessageView;
use crate::api;
use crate::shared::{Live, Shared, SharedAction};

/// The share token in the address (`/s/<token>`), if this is a share link's page.
pub fn token_in_path() -> Option<String> {
    let path = web_sys::window()?.location().pathname().ok()?;
    path.strip_prefix("/s/").map(|t| t.trim_end_matches('/').to_owned()).filter(|t| !t.is_empty())
}

/// Props of [`SharedPage`].
#[derive(Properties, PartialEq)]
pub struct SharedProps {
    /// The link's token.
    pub token: String,
}

/// A reducer over [`Shared`] for Yew.
#[derive(Clone, PartialEq, Default)]
struct State(Shared);

impl Reducible for State {
    type Action = SharedAction;

    fn reduce(self: Rc<Self>, action: SharedAction) -> Rc<Self> {
        Rc::new(State(self.0.clone().reduce(action)))
    }
}

/// The names of the stream's events that carry a frame.
const FRAME_EVENTS: [&str; 6] = ["snapshot", "message", "superseded", "generation_started", "delta", "done"];

/// How long after a refused stream it is asked for again: this, doubled at each refusal
/// up to [`RETRY_MAX_MS`].
const RETRY_FIRST_MS: u32 = 3_000;
/// The longest wait between two attempts.
const RETRY_MAX_MS: u32 = 30_000;

/// The page's hold on its stream: the open one, the handlers of the last attempt (dropped
/// when the next attempt replaces them, or when the page goes), and whether the page is
/// gone (then nothing is opened again).
#[derive(Default)]
struct Follow {
    source: Option<EventSource>,
    on_frame: Vec<Closure<dyn Fn(MessageEvent)>>,
    on_error: Option<Closure<dyn Fn(web_sys::Event)>>,
    gone: bool,
}

impl Follow {
    /// Closes the stream, then lets go of its handlers (the closures hold the cell, so
    /// keeping them would keep the page's state alive after it is gone).
    fn close(&mut self) {
        if let Some(source) = self.source.take() {
            source.close();
        }
        self.on_frame.clear();
        self.on_error = None;
    }
}

type FollowCell = Rc<RefCell<Follow>>;

/// The page.
#[function_component(SharedPage)]
pub fn shared_page(props: &SharedProps) -> Html {
    let state = use_reducer(State::default);
    {
        let dispatch = state.dispatcher();
        use_effect_with(props.token.clone(), move |token| {
            let stream = FollowCell::default();
            follow(token, dispatch, stream.clone(), 0);
            move || {
                let mut stream = stream.borrow_mut();
                stream.gone = true;
                stream.close();
            }
        });
    }
    let shared = &state.0;
    let title = shared.session.as_ref().map_or("Shared conversation", |s| s.title.as_str()).to_owned();
    use_effect_with(title.clone(), |title| {
        if let Some(document) = web_sys::window().and_then(|w| w.document()) {
            document.set_title(&format!("{title} · shared on relay-chat"));
        }
    });
    let (badge, badge_class) = match shared.live {
        Live::Connecting => ("Connecting…", "connecting"),
        Live::Live => ("Live", "live"),
        Live::Reconnecting => ("Reconnecting…", "connecting"),
        Live::Static => ("Not live", "static"),
        Live::Ended(_) => ("Ended", "ended"),
        Live::Refused => ("Not live", "static"),
    };
    let ended = match shared.live {
        Live::Ended(Some(ShareEnd::Revoked)) => Some("The owner stopped sharing this conversation."),
        Live::Ended(Some(ShareEnd::Expired)) => Some("This share link has expired."),
        Live::Ended(None) => Some("This link does not open anything: it was revoked, it expired, or it never existed."),
        Live::Static => Some(
            "This conversation cannot be followed live right now (many people may be watching): it is shown as it was when the page loaded, and it joins live as soon as it can.",
        ),
        Live::Refused => Some("This conversation cannot be opened right now; trying again shortly."),
        _ => None,
    };
    let streaming = shared.generating.as_ref().map(|g| {
        Rc::new(Message {
            id: g.message_id,
            session_id: shared.session.as_ref().map(|s| s.id).unwrap_or_default(),
            role: Role::Assistant,
            content: g.content.clone(),
            token_count: None,
            status: MessageStatus::Generating,
            created_at: shared.session.as_ref().map(|s| s.updated_at).unwrap_or_default(),
            superseded: false,
            model: None,
            replaced_by: None,
        })
    });
    let streaming_id = streaming.as_ref().map(|s| s.id);
    let views = shared.messages.iter().filter(|m| Some(m.id) != streaming_id).chain(streaming.iter()).map(|m| {
        let is_streaming = Some(m.id) == streaming_id;
        html! { <MessageView key={m.id.to_string()} message={m.clone()} streaming={is_streaming} /> }
    });
    let loading = (shared.live == Live::Connecting).then(|| html! { <p class="loading">{ "Loading…" }</p> });
    html! {
        <div class="shared-page">
            <main class="chat shared" aria-labelledby="chat-title">
                <header class="chat-head">
                    <h1 id="chat-title">{ title }</h1>
                    <span id="shared-live" class={classes!("live-badge", badge_class)} role="status">{ badge }</span>
                </header>
                <p class="shared-note">
                    { "A shared conversation: read-only, updated live as it continues. " }
                    <a href="/" rel="noreferrer">{ "relay-chat" }</a>
                </p>
                if let Some(text) = ended {
                    <p id="shared-ended" class="shared-ended" role="status">{ text }</p>
                }
                <div class="messages" id="messages">{ loading }{ for views }</div>
            </main>
        </div>
    }
}

/// Opens the link's stream and feeds the page from it; the stream is kept in `cell`
/// (closed when the page goes, or when the link ends). `refused` counts the refusals so
/// far, for the wait before the next attempt.
fn follow(token: &str, dispatch: UseReducerDispatcher<State>, cell: FollowCell, refused: u32) {
    let encoded = String::from(js_sys::encode_uri_component(token));
    let Ok(source) = EventSource::new(&format!("/api/v1/shared/{encoded}/events")) else {
        dispatch.dispatch(SharedAction::Read(None));
        return;
    };
    let mut on_frames = Vec::with_capacity(FRAME_EVENTS.len() + 1);
    for name in FRAME_EVENTS {
        let dispatch = dispatch.clone();
        let on_frame = Closure::<dyn Fn(MessageEvent)>::new(move |event: MessageEvent| {
            let Some(data) = event.data().as_string() else { return };
            if let Ok(frame) = serde_json::from_str::<ServerFrame>(&data) {
                dispatch.dispatch(SharedAction::Frame(frame));
            }
        });
        let _ = source.add_event_listener_with_callback(name, on_frame.as_ref().unchecked_ref());
        on_frames.push(on_frame);
    }
    {
        let (dispatch, cell) = (dispatch.clone(), cell.clone());
        let on_ended = Closure::<dyn Fn(MessageEvent)>::new(move |event: MessageEvent| {
            let reason = event
                .data()
                .as_string()
                .and_then(|d| serde_json::from_str::<ShareEnded>(&d).ok())
                .map_or(ShareEnd::Revoked, |e| e.reason);
            if let Some(source) = cell.borrow_mut().source.take() {
                source.close();
            }
            dispatch.dispatch(SharedAction::Ended(reason));
        });
        let _ = source.add_event_listener_with_callback("ended", on_ended.as_ref().unchecked_ref());
        on_frames.push(on_ended);
    }
    let on_error = {
        let (token, cell) = (token.to_owned(), cell.clone());
        let on_error = Closure::<dyn Fn(web_sys::Event)>::new(move |_: web_sys::Event| {
            let closed =
                cell.borrow().source.as_ref().is_none_or(|s: &EventSource| s.ready_state() == EventSource::CLOSED);
            if !closed {
                // The browser opens the stream again by itself (a fresh snapshot follows).
                dispatch.dispatch(SharedAction::Dropped);
                return;
            }
            // Refused (the link is gone, or too many watch): what does the page say? Unless
            // the link is gone, the stream is asked for again later. Each refusal reads the
            // page again (at most one read every 30 s once the waits have grown), so the
            // conversation shown keeps up, and a link revoked meanwhile shows as ended.
            cell.borrow_mut().source.take();
            let (dispatch, token, cell) = (dispatch.clone(), token.clone(), cell.clone());
            wasm_bindgen_futures::spawn_local(async move {
                match api::shared(&token).await {
                    Ok(page) => dispatch.dispatch(SharedAction::Read(Some(page))),
                    Err(e) if e.status == 404 => return dispatch.dispatch(SharedAction::Read(None)),
                    Err(_) => dispatch.dispatch(SharedAction::Refused),
                }
                let wait = RETRY_FIRST_MS.saturating_mul(1 << refused.min(4)).min(RETRY_MAX_MS);
                gloo_timers::future::TimeoutFuture::new(wait).await;
                if !cell.borrow().gone {
                    follow(&token, dispatch, cell, refused + 1);
                }
            });
        });
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        on_error
    };
    // The previous attempt's handlers go now: its stream is closed and fires no more.
    let mut hold = cell.borrow_mut();
    hold.on_error = Some(on_error);
    hold.on_frame = on_frames;
    hold.source = Some(source);
}
