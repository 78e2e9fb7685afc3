//! The text box: Enter sends, Shift+Enter is a new line, it grows with its text; the draft
//! of each session is kept; disabled with the reason when the user may not send; also the
//! place where a message is edited.

use uuid::Uuid;
use wasm_bindgen::JsCast;
use web_sys::HtmlTextAreaElement;
use yew::prelude::*;

use relay_protocol::Prompt;

use super::icons::{self, Icon};
use super::prompt_picker::{self, PromptPicker};
use crate::ctx::Ctx;
use crate::state::{Action, Blocked, InFlight, Retry};
use crate::storage;

/// Props of [`Composer`].
#[derive(Properties, PartialEq)]
pub struct ComposerProps {
    /// The session it sends to; none for a new chat (its first send makes the session).
    pub session_id: Option<Uuid>,
    /// The message being edited, if any, and its text to start from.
    #[prop_or_default]
    pub editing: Option<(Uuid, String)>,
    /// Editing ended (saved or cancelled).
    #[prop_or_default]
    pub on_done_editing: Callback<()>,
    /// Why sending is off, if it is.
    pub blocked: Option<Blocked>,
    /// Whether the connection is up.
    pub online: bool,
    /// A send the server refused, to take back.
    pub returned: Option<InFlight>,
}

/// The composer.
#[function_component(Composer)]
pub fn composer(props: &ComposerProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    // A new chat keeps its draft under the nil id.
    let session_id = props.session_id.unwrap_or_default();
    let text = use_state(|| storage::load_draft(session_id));
    let area = use_node_ref();
    let editing = props.editing.as_ref().map(|(id, _)| *id);
    {
        let (text, area) = (text.clone(), area.clone());
        use_effect_with(props.editing.clone(), move |edit| {
            if let Some((_, edit)) = edit {
                text.set(edit.clone());
                if let Some(area) = area.cast::<web_sys::HtmlElement>() {
                    let _ = area.focus();
                }
            }
        });
    }
    // A send the server refused comes back to the composer it left, unless the user has
    // started another message (then a toast offers to send it again).
    {
        let (ctx, text) = (ctx.clone(), text.clone());
        let returned = props.returned.clone().filter(|r| r.session_id == session_id);
        use_effect_with(returned, move |returned| {
            if let Some(returned) = returned {
                if text.trim().is_empty() {
                    storage::save_draft(session_id, &returned.content);
                    text.set(returned.content.clone());
                } else {
                    ctx.dispatch(Action::Toast(
                        "Your message was not sent.".into(),
                        Some(Retry::Send { session_id, content: returned.content.clone(), key: returned.key.clone() }),
                    ));
                }
                ctx.dispatch(Action::TookReturned);
            }
        });
    }
    let disabled = props.blocked.is_some() || !props.online;
    // Saved prompts: `/` at the start of a one-line text offers them. Esc closes the list
    // and keeps the text (it may be a message that starts with `/`); the list stays closed
    // while that text is typed on, and opens again once it is erased.
    let prompts = use_state(|| None::<Vec<Prompt>>);
    let highlight = use_state(|| 0usize);
    let dismissed = use_state(|| None::<String>);
    let picking = editing.is_none()
        && text.starts_with('/')
        && !text.contains('\n')
        && !dismissed.as_deref().is_some_and(|d| text.starts_with(d));
    {
        let (ctx, prompts) = (ctx.clone(), prompts.clone());
        use_effect_with(picking, move |picking| {
            if *picking && prompts.is_none() {
                ctx.load_prompts(Callback::from(move |list| prompts.set(Some(list))));
            }
        });
    }
    let shown: Option<Vec<Prompt>> = picking
        .then(|| prompts.as_ref().map(|all| prompt_picker::matching(all, &text[1..]).into_iter().cloned().collect()))
        .flatten();
    let chosen = shown.as_ref().and_then(|s| s.get((*highlight).min(s.len().saturating_sub(1)))).cloned();
    let insert = {
        let (text, highlight, area) = (text.clone(), highlight.clone(), area.clone());
        Callback::from(move |prompt: Prompt| {
            storage::save_draft(session_id, &prompt.content);
            text.set(prompt.content);
            highlight.set(0);
            if let Some(area) = area.cast::<web_sys::HtmlElement>() {
                let _ = area.focus();
            }
        })
    };
    let refresh = {
        let prompts = prompts.clone();
        Callback::from(move |list| prompts.set(Some(list)))
    };
    let delete_prompt = {
        let (ctx, refresh) = (ctx.clone(), refresh.clone());
        Callback::from(move |id| ctx.delete_prompt(id, refresh.clone()))
    };
    let save_prompt = {
        let (ctx, refresh) = (ctx.clone(), refresh.clone());
        Callback::from(move |(title, content)| ctx.save_prompt(title, content, refresh.clone()))
    };
    let oninput = {
        let (text, highlight, dismissed) = (text.clone(), highlight.clone(), dismissed.clone());
        Callback::from(move |e: InputEvent| {
            let Some(area) = e.target().and_then(|t| t.dyn_into::<HtmlTextAreaElement>().ok()) else { return };
            let value = area.value();
            if editing.is_none() {
                storage::save_draft(session_id, &value);
            }
            // The list closed with Esc opens again once the text it closed on is erased.
            if dismissed.as_deref().is_some_and(|d| !value.starts_with(d)) {
                dismissed.set(None);
            }
            text.set(value);
            highlight.set(0);
        })
    };
    let submit = {
        let (ctx, text, done) = (ctx.clone(), text.clone(), props.on_done_editing.clone());
        let new_chat = props.session_id.is_none();
        Callback::from(move |()| {
            let content = (*text).clone();
            if content.trim().is_empty() || disabled {
                return;
            }
            if new_chat {
                let text = text.clone();
                ctx.start_chat(content, Callback::from(move |()| text.set(String::new())));
                return;
            }
            let sent = match editing {
                Some(message_id) => ctx.edit(session_id, message_id, content),
                None => ctx.send(session_id, content, None),
            };
            if sent {
                text.set(String::new());
                if editing.is_some() {
                    done.emit(());
                } else {
                    storage::save_draft(session_id, "");
                }
            }
        })
    };
    let onkeydown = {
        let (submit, done, text, dismissed) =
            (submit.clone(), props.on_done_editing.clone(), text.clone(), dismissed.clone());
        let (highlight, insert, count, chosen) =
            (highlight.clone(), insert.clone(), shown.as_ref().map_or(0, Vec::len), chosen.clone());
        Callback::from(move |e: KeyboardEvent| {
            if picking && count > 0 {
                match e.key().as_str() {
                    "ArrowDown" => {
                        e.prevent_default();
                        highlight.set((*highlight + 1) % count);
                        return;
                    }
                    "ArrowUp" => {
                        e.prevent_default();
                        highlight.set((*highlight + count - 1) % count);
                        return;
                    }
                    "Enter" if !e.shift_key() && !e.is_composing() => {
                        e.prevent_default();
                        if let Some(prompt) = chosen.clone() {
                            insert.emit(prompt);
                        }
                        return;
                    }
                    _ => {}
                }
            }
            if picking && e.key() == "Escape" {
                e.prevent_default();
                dismissed.set(Some((*text).clone()));
                return;
            }
            if e.key() == "Enter" && !e.shift_key() && !e.is_composing() {
                e.prevent_default();
                submit.emit(());
            } else if e.key() == "Escape" && editing.is_some() {
                // Esc leaves the edit (and stops nothing else).
                e.prevent_default();
                text.set(storage::load_draft(session_id));
                done.emit(());
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
    let placeholder = match (&props.blocked, props.online) {
        (Some(b), _) => b.reason.clone(),
        (None, false) => "Reconnecting…".to_string(),
        (None, true) => "Message (Enter to send, Shift+Enter for a new line, / for saved prompts)".to_string(),
    };
    let empty = text.trim().is_empty();
    html! {
        <form class={classes!("composer", editing.is_some().then_some("editing"))} {onsubmit}>
            if let Some(b) = &props.blocked {
                <p class="blocked" id="blocked">{ &b.reason }</p>
            }
            if editing.is_some() {
                <p class="editing-note">{ "Editing your message: the answers after it are replaced." }</p>
            }
            if picking {
                <PromptPicker prompts={shown.clone()} highlight={(*highlight).min(shown.as_ref().map_or(0, |s| s.len().saturating_sub(1)))}
                    on_pick={insert.clone()} on_delete={delete_prompt} on_save={save_prompt} />
            }
            <div class="composer-box">
                <textarea id="composer" ref={area} rows={composer_rows(&text).to_string()} value={(*text).clone()}
                    aria-label="Message" aria-controls={picking.then_some("prompt-options")}
                    aria-activedescendant={chosen.as_ref().map(|p| prompt_picker::option_id(p.id))}
                    {oninput} {onkeydown} {placeholder} {disabled} />
                <div class="composer-buttons">
                    if editing.is_some() {
                        <button type="button" class="link" onclick={cancel}>{ "Cancel" }</button>
                        <button id="send" type="submit" class="primary" {disabled}>{ "Save & answer" }</button>
                    } else {
                        <button id="send" type="submit" class="primary send" aria-label="Send" title="Send (Enter)"
                            disabled={disabled || empty}>
                            { icons::show(Icon::Send) }
                        </button>
                    }
                </div>
            </div>
        </form>
    }
}

/// The composer grows with its text, line by line, from 2 lines up to 8 (then it scrolls).
fn composer_rows(text: &str) -> usize {
    (text.split('\n').count()).clamp(2, 8)
}
