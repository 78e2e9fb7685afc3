//! The search box (Ctrl/Cmd+K, or Search in the session list): the user's messages that
//! hold every word typed, best first, each with its session and the match marked; choosing
//! one opens its session at the message.

use relay_protocol::{Role, SearchResult};
use wasm_bindgen::JsCast;
use web_sys::{HtmlElement, HtmlInputElement};
use yew::prelude::*;

use super::icons::{self, Icon};
use crate::api;
use crate::ctx::Ctx;
use crate::effects::focus_soon;
use crate::snippet;
use crate::state::Action;

/// How long typing must pause before the search is asked.
const PAUSE_MS: u32 = 200;

/// What the box shows under the input.
#[derive(Clone, PartialEq)]
enum Found {
    /// Nothing typed yet.
    Nothing,
    /// Asking.
    Searching,
    /// The first page of results, and how many there are in all.
    Results(Vec<SearchResult>, u64),
    /// The search failed.
    Failed(String),
}

/// The search box, over everything.
#[function_component(SearchBox)]
pub fn search_box() -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let found = use_state(|| Found::Nothing);
    // The pending pause, and the number of the latest search (an older answer is dropped).
    let pause = use_mut_ref(|| None::<gloo_timers::callback::Timeout>);
    let latest = use_mut_ref(|| 0u32);
    use_effect_with((), |_| focus_soon("search-input"));

    let close = {
        let ctx = ctx.clone();
        Callback::from(move |_: ()| ctx.dispatch(Action::Search(false)))
    };
    let oninput = {
        let (ctx, found, pause, latest) = (ctx.clone(), found.clone(), pause.clone(), latest.clone());
        Callback::from(move |e: InputEvent| {
            let query = e.target_unchecked_into::<HtmlInputElement>().value().trim().to_string();
            *latest.borrow_mut() += 1;
            let number = *latest.borrow();
            if query.is_empty() {
                pause.borrow_mut().take();
                found.set(Found::Nothing);
                return;
            }
            found.set(Found::Searching);
            let (ctx, found, latest) = (ctx.clone(), found.clone(), latest.clone());
            *pause.borrow_mut() = Some(gloo_timers::callback::Timeout::new(PAUSE_MS, move || {
                let Some(token) = ctx.token.clone() else { return };
                wasm_bindgen_futures::spawn_local(async move {
                    let answer = api::search(&token, &query, 1).await;
                    if *latest.borrow() != number {
                        return;
                    }
                    found.set(match answer {
                        Ok(page) => Found::Results(page.results, page.total),
                        Err(e) => Found::Failed(e.message),
                    });
                });
            }));
        })
    };
    let open = {
        let ctx = ctx.clone();
        Callback::from(move |r: (uuid::Uuid, uuid::Uuid)| ctx.open_found(r.0, r.1))
    };
    // Esc closes; Enter in the input opens the first result; the arrows move between them.
    let onkeydown = {
        let (close, open, found) = (close.clone(), open.clone(), found.clone());
        Callback::from(move |e: KeyboardEvent| {
            let in_input = e.target_dyn_into::<HtmlInputElement>().is_some();
            match e.key().as_str() {
                "Escape" => {
                    e.prevent_default();
                    close.emit(());
                }
                "Enter" if in_input => {
                    if let Found::Results(results, _) = &*found
                        && let Some(first) = results.first()
                    {
                        e.prevent_default();
                        open.emit((first.session_id, first.message_id));
                    }
                }
                "ArrowDown" | "ArrowUp" => {
                    e.prevent_default();
                    move_focus(e.key() == "ArrowDown");
                }
                _ => {}
            }
        })
    };
    let on_backdrop = {
        let close = close.clone();
        Callback::from(move |e: MouseEvent| {
            let on_backdrop = e.target().zip(e.current_target()).is_some_and(|(t, c)| t == c);
            if on_backdrop {
                close.emit(());
            }
        })
    };

    let status = match &*found {
        Found::Nothing => "Type words to find in your chats.".to_string(),
        Found::Searching => "Searching…".to_string(),
        Found::Results(_, 0) => "No message holds all these words.".to_string(),
        Found::Results(results, total) if *total as usize > results.len() => {
            format!("The best {} of {total} messages found.", results.len())
        }
        Found::Results(_, 1) => "1 message found.".to_string(),
        Found::Results(_, total) => format!("{total} messages found."),
        Found::Failed(why) => format!("The search failed: {why}"),
    };
    let results = match &*found {
        Found::Results(results, _) => results.clone(),
        _ => Vec::new(),
    };
    html! {
        <div class="search-backdrop" onclick={on_backdrop} {onkeydown}>
            <div class="search-box" id="search" role="dialog" aria-modal="true" aria-labelledby="search-title">
                <div class="search-head">
                    <h2 id="search-title">{ "Search your chats" }</h2>
                    <button class="icon" type="button" aria-label="Close the search" title="Close (Esc)"
                        onclick={ let close = close.clone(); Callback::from(move |_| close.emit(())) }>
                        { icons::show(Icon::Close) }
                    </button>
                </div>
                <input id="search-input" type="search" placeholder="Words to find" aria-label="Words to find"
                    autocomplete="off" spellcheck="false" aria-describedby="search-status" {oninput} />
                <p id="search-status" class="muted" role="status" aria-live="polite">{ status }</p>
                <ul id="search-results" class="search-results">
                    { for results.iter().map(|r| html! { <ResultItem key={r.message_id.to_string()} result={r.clone()} open={open.clone()} /> }) }
                </ul>
            </div>
        </div>
    }
}

/// Props of [`ResultItem`].
#[derive(Properties, PartialEq)]
struct ResultProps {
    result: SearchResult,
    open: Callback<(uuid::Uuid, uuid::Uuid)>,
}

/// One result: its session's title, who wrote it and when, and the snippet.
#[function_component(ResultItem)]
fn result_item(props: &ResultProps) -> Html {
    let r = &props.result;
    let onclick = {
        let (open, ids) = (props.open.clone(), (r.session_id, r.message_id));
        Callback::from(move |_| open.emit(ids))
    };
    let who = if r.role == Role::User { "You" } else { "Model" };
    // In the reader's own time and way of writing dates (and no date formatting code in the module).
    let when = js_sys::Date::new(&(r.created_at.timestamp_millis() as f64).into())
        .to_locale_string("default", &wasm_bindgen::JsValue::UNDEFINED);
    html! {
        <li>
            <button class="search-result" type="button" data-message={r.message_id.to_string()} {onclick}>
                <span class="result-head">
                    <span class="result-title">{ &r.session_title }</span>
                    <span class="muted">{ format!("{who} · {}", String::from(when)) }</span>
                </span>
                <span class="snippet">
                    { for snippet::parts(&r.snippet).into_iter().map(|(text, marked)| if marked {
                        html! { <mark>{ text }</mark> }
                    } else {
                        html! { { text } }
                    }) }
                </span>
            </button>
        </li>
    }
}

/// Moves the keyboard focus to the next (or previous) result, from the input or a result.
fn move_focus(down: bool) {
    let Some(document) = web_sys::window().and_then(|w| w.document()) else { return };
    let Ok(items) = document.query_selector_all("#search-input, #search-results .search-result") else { return };
    let items: Vec<HtmlElement> = (0..items.length()).filter_map(|i| items.item(i)?.dyn_into().ok()).collect();
    let active = document.active_element();
    let at = items.iter().position(|e| active.as_ref().is_some_and(|a| a == e.unchecked_ref::<web_sys::Element>()));
    let next = match (at, down) {
        (Some(i), true) => (i + 1).min(items.len().saturating_sub(1)),
        (Some(i), false) => i.saturating_sub(1),
        (None, _) => 0,
    };
    if let Some(item) = items.get(next) {
        let _ = item.focus();
    }
}
