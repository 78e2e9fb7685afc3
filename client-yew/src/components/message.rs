//! One message: the user's as text, the model's as markdown ([`ReplyBody`]), with its
//! actions: copy, edit, rate, regenerate, and the versions it replaced (`‹ 1/2 ›`).

use std::rc::Rc;

use relay_protocol::{Message, MessageStatus, Role};
use web_sys::Element;
use yew::prelude::*;

use super::icons::{self, Icon};
use super::reply_body::ReplyBody;
use crate::effects::copy_with_feedback;

/// Which of a message's versions shows, and how to change it.
#[derive(Clone, PartialEq)]
pub struct VersionPicker {
    /// The version shown (0-based).
    pub shown: usize,
    /// How many versions there are.
    pub count: usize,
    /// Shows another version.
    pub pick: Callback<usize>,
}

/// Props of [`MessageView`].
#[derive(Properties, PartialEq)]
pub struct MessageProps {
    /// The message (for a reply streaming in: what has arrived, status `generating`).
    pub message: Rc<Message>,
    /// Whether it is still streaming in.
    #[prop_or_default]
    pub streaming: bool,
    /// Starts editing it (a user message, while nothing streams).
    #[prop_or_default]
    pub on_edit: Option<Callback<()>>,
    /// Asks for another answer (the last reply, while nothing streams).
    #[prop_or_default]
    pub on_regenerate: Option<Callback<()>>,
    /// Its versions, when it replaced others.
    #[prop_or_default]
    pub versions: Option<VersionPicker>,
    /// The user's rating of this reply, if they gave one here.
    #[prop_or_default]
    pub rating: Option<i8>,
    /// Rates the reply (1 good, -1 bad); none where replies cannot be rated.
    #[prop_or_default]
    pub on_rate: Option<Callback<i8>>,
}

/// One message.
#[function_component(MessageView)]
pub fn message_view(props: &MessageProps) -> Html {
    let m = &props.message;
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::System => "system",
    };
    let badge = match m.status {
        MessageStatus::Cancelled => Some("stopped"),
        MessageStatus::Error => Some("failed"),
        MessageStatus::Generating if !props.streaming => Some("interrupted"),
        MessageStatus::Generating | MessageStatus::Complete => None,
    };
    let copy = {
        let message = m.clone();
        Callback::from(move |event: MouseEvent| {
            // Yew delegates events from the document: the button is found from the target.
            let button = event.target_dyn_into::<Element>().and_then(|t| t.closest(".copy-message").ok().flatten());
            if let Some(button) = button {
                let label = button.query_selector(".label").ok().flatten().unwrap_or(button);
                copy_with_feedback(&message.content, label);
            }
        })
    };
    let content = if m.role == Role::Assistant {
        html! { <ReplyBody text={m.clone()} streaming={props.streaming} /> }
    } else {
        html! { <div class="content text">{ &m.content }</div> }
    };
    let versions = props.versions.as_ref().map(|v| {
        let (previous, next) = (v.pick.clone(), v.pick.clone());
        let shown = v.shown;
        html! {
            <span class="versions" role="group" aria-label="Versions">
                <button class="icon previous-version" type="button" aria-label="Previous version" title="Previous version"
                    disabled={shown == 0} onclick={Callback::from(move |_| previous.emit(shown - 1))}>
                    { icons::show(Icon::Left) }
                </button>
                <span class="version-count">{ format!("{}/{}", shown + 1, v.count) }</span>
                <button class="icon next-version" type="button" aria-label="Next version" title="Next version"
                    disabled={shown + 1 >= v.count} onclick={Callback::from(move |_| next.emit(shown + 1))}>
                    { icons::show(Icon::Right) }
                </button>
            </span>
        }
    });
    let (id, class) = if props.streaming {
        (Some("streaming"), classes!("message", role, "streaming"))
    } else {
        (None, classes!("message", role))
    };
    html! {
        <article {id} {class} data-id={m.id.to_string()}>
            { content }
            if props.streaming {
                <span class="typing" id="typing" aria-hidden="true"><i></i><i></i><i></i></span>
            } else {
                <footer>
                    { for versions }
                    if let Some(badge) = badge {
                        <span class={classes!("badge", badge)}>{ badge }</span>
                    }
                    <button class="link copy-message" type="button" title="Copy the message" onclick={copy}>
                        { icons::show(Icon::Copy) }<span class="label">{ "Copy" }</span>
                    </button>
                    if let Some(on_edit) = &props.on_edit {
                        <button class="link edit" type="button" onclick={ let on_edit = on_edit.clone(); Callback::from(move |_| on_edit.emit(())) }>
                            { icons::show(Icon::Pencil) }{ "Edit" }
                        </button>
                    }
                    if let Some(on_rate) = props.on_rate.as_ref().filter(|_| m.role == Role::Assistant) {
                        <span class="rating" role="group" aria-label="Rate this reply">
                            <button class={classes!("icon", "rate-up", (props.rating == Some(1)).then_some("chosen"))} type="button"
                                aria-label="Good reply" title="Good reply" aria-pressed={(props.rating == Some(1)).to_string()}
                                onclick={ let r = on_rate.clone(); Callback::from(move |_| r.emit(1)) }>
                                { icons::show(Icon::ThumbUp) }
                            </button>
                            <button class={classes!("icon", "rate-down", (props.rating == Some(-1)).then_some("chosen"))} type="button"
                                aria-label="Bad reply" title="Bad reply" aria-pressed={(props.rating == Some(-1)).to_string()}
                                onclick={ let r = on_rate.clone(); Callback::from(move |_| r.emit(-1)) }>
                                { icons::show(Icon::ThumbDown) }
                            </button>
                        </span>
                    }
                    if let Some(model) = m.model.as_ref().filter(|_| m.role == Role::Assistant) {
                        <span class="model-name" title="The model that wrote this reply">{ model }</span>
                    }
                    if let Some(on_regenerate) = &props.on_regenerate {
                        <button id="regenerate" class="link" type="button" onclick={ let r = on_regenerate.clone(); Callback::from(move |_| r.emit(())) }>
                            { icons::show(Icon::Again) }{ "Regenerate" }
                        </button>
                    }
                </footer>
            }
        </article>
    }
}
